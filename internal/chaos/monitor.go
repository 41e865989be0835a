package chaos

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
)

// Sample is one reading of the group's committed offsets and the log ends,
// per partition (-1: nothing committed).
type Sample struct {
	At        time.Time
	Committed []int64
	LogEnd    []int64
}

// Monitor samples the ingest group's commits and checks them as it goes:
// never backwards, never beyond the log end, and never past an offset no
// worker had handled (nor dead-lettered) by the time of the sample.
type Monitor struct {
	Client     *kafka.Client // direct to the broker
	Group      string
	Topic      string
	Partitions int
	Ledger     *Ledger

	mu         sync.Mutex
	samples    []Sample
	high       []int64 // highest commit seen per partition
	backwards  []string
	pastEnd    []string
	suspects   []suspect // commits ahead of the handled prefix, re-checked at the end
	errors     int
	lastErr    error
	lastSample time.Time
}

// suspect is a commit that was ahead of every offset handled when sampled:
// a violation unless the offsets in between were dead-lettered by then.
type suspect struct {
	at        time.Time
	p         int
	committed int64
	missing   []int64
}

// Run samples every interval until ctx is done.
func (m *Monitor) Run(ctx context.Context, interval time.Duration) {
	m.mu.Lock()
	if m.high == nil {
		m.high = make([]int64, m.Partitions)
		for i := range m.high {
			m.high[i] = -1
		}
	}
	m.mu.Unlock()
	for ctx.Err() == nil {
		m.sample(ctx)
		sleepCtx(ctx, interval)
	}
}

// Read returns the committed offsets and log ends now.
func (m *Monitor) Read(ctx context.Context) (committed, logEnd []int64, err error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ps := make([]int, m.Partitions)
	for i := range ps {
		ps[i] = i
	}
	of, err := m.Client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: m.Group, Topics: map[string][]int{m.Topic: ps}})
	if err == nil && of.Error != nil {
		err = of.Error
	}
	if err != nil {
		return nil, nil, fmt.Errorf("offset fetch: %w", err)
	}
	committed = make([]int64, m.Partitions)
	for i := range committed {
		committed[i] = -1
	}
	for _, p := range of.Topics[m.Topic] {
		if p.Error != nil {
			return nil, nil, fmt.Errorf("offset fetch %d: %w", p.Partition, p.Error)
		}
		if p.Partition < m.Partitions {
			committed[p.Partition] = p.CommittedOffset
		}
	}
	logEnd, err = m.LogEnds(ctx)
	return committed, logEnd, err
}

// LogEnds returns every partition's log end offset. A broker's error (an
// UNKNOWN_SERVER_ERROR for one of 1,000 partitions right after an ingest
// was SIGKILLed, in CI) is retried for up to 20 s: the harness measures the
// hand-over, and one failed look at the log ends is no finding.
func (m *Monitor) LogEnds(ctx context.Context) ([]int64, error) {
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, err := m.logEnds(ctx)
		if err == nil || ctx.Err() != nil || time.Now().After(deadline) {
			return out, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (m *Monitor) logEnds(ctx context.Context) ([]int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	reqs := make([]kafka.OffsetRequest, m.Partitions)
	for p := range reqs {
		reqs[p] = kafka.LastOffsetOf(p)
	}
	lo, err := m.Client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{m.Topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("list offsets: %w", err)
	}
	out := make([]int64, m.Partitions)
	got := 0
	for _, p := range lo.Topics[m.Topic] {
		if p.Error != nil {
			return nil, fmt.Errorf("list offsets %d: %w", p.Partition, p.Error)
		}
		if p.Partition < m.Partitions {
			out[p.Partition] = p.LastOffset
			got++
		}
	}
	if got != m.Partitions {
		return nil, fmt.Errorf("list offsets: %d of %d partitions answered", got, m.Partitions)
	}
	return out, nil
}

func (m *Monitor) sample(ctx context.Context) {
	committed, logEnd, err := m.Read(ctx)
	if err != nil {
		m.mu.Lock()
		m.errors++
		m.lastErr = err
		m.mu.Unlock()
		return
	}
	s := Sample{At: time.Now(), Committed: committed, LogEnd: logEnd}
	// The handled prefix is read after the commit: it only grows, so a
	// commit ahead of it now was ahead of it when committed.
	var sus []suspect
	for p, c := range committed {
		if c < 0 {
			continue
		}
		if prefix := m.Ledger.Prefix(p); c > prefix {
			if miss := m.Ledger.Unhandled(p, prefix, c, 20); len(miss) > 0 {
				sus = append(sus, suspect{at: s.At, p: p, committed: c, missing: miss})
			}
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.lastSample = s.At
	for p, c := range committed {
		if c < 0 {
			continue
		}
		if c < m.high[p] {
			m.backwards = append(m.backwards, fmt.Sprintf("%s partition %d: commit %d after %d",
				s.At.Format("15:04:05.000"), p, c, m.high[p]))
		}
		m.high[p] = max(m.high[p], c)
		if c > logEnd[p] {
			m.pastEnd = append(m.pastEnd, fmt.Sprintf("%s partition %d: commit %d beyond the log end %d",
				s.At.Format("15:04:05.000"), p, c, logEnd[p]))
		}
	}
	m.suspects = append(m.suspects, sus...)
	m.samples = append(m.samples, s)
}

// Samples returns every sample so far.
func (m *Monitor) Samples() []Sample {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Sample(nil), m.samples...)
}

// Last returns the last sample, if any.
func (m *Monitor) Last() (Sample, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.samples) == 0 {
		return Sample{}, false
	}
	return m.samples[len(m.samples)-1], true
}

// CommitFindings returns what the sampling found wrong: commits that went
// backwards, passed the log end, or passed an offset that was neither
// handled nor dead-lettered when sampled. inKafka are the dead letters found
// in the Kafka dead-letter topic at the end: the ingest commits past a dead
// letter only once Kafka has it, so one of them may be passed even if the
// scan of Redis never saw it there.
func (m *Monitor) CommitFindings(inKafka map[pOff]bool) (backwards, pastEnd, pastUnacked []string) {
	dead := m.Ledger.Dead()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range m.suspects {
		var bad []int64
		for _, off := range s.missing {
			if seen, ok := dead[pOff{s.p, off}]; ok && !seen.After(s.at.Add(2*time.Second)) {
				continue // dead-lettered (seen at the next scan of the dead letters)
			}
			if inKafka[pOff{s.p, off}] {
				continue
			}
			bad = append(bad, off)
		}
		if len(bad) > 0 {
			pastUnacked = append(pastUnacked, fmt.Sprintf("%s partition %d: committed %d while offset(s) %v had not been handled",
				s.at.Format("15:04:05.000"), s.p, s.committed, bad))
		}
	}
	return append([]string(nil), m.backwards...), append([]string(nil), m.pastEnd...), pastUnacked
}

// Stats returns the number of samples and of failed samples.
func (m *Monitor) Stats() (samples, errors int, lastErr error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.samples), m.errors, m.lastErr
}

// Recovery returns the first time at or after from at which every
// partition's commit had reached point, and whether it did.
func Recovery(samples []Sample, from time.Time, point []int64) (time.Time, bool) {
	for _, s := range samples {
		if s.At.Before(from) {
			continue
		}
		ok := true
		for p, want := range point {
			if p >= len(s.Committed) || s.Committed[p] < want {
				ok = false
				break
			}
		}
		if ok {
			return s.At, true
		}
	}
	return time.Time{}, false
}

// Lag returns the sum over partitions of log end − committed in s.
func (s Sample) Lag() int64 {
	var n int64
	for p, end := range s.LogEnd {
		n += end - max(s.Committed[p], 0)
	}
	return n
}
