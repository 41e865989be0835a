package chaos

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// Outcome is what the checker found over a whole run.
type Outcome struct {
	Records     int64 // offsets in the topic at the end (sum of the log ends)
	Produced    int   // distinct records Kafka acknowledged to the producer
	KafkaCopies int   // extra copies in Kafka of a record (producer retries), each handled as a record of its own
	Handled     int   // distinct offsets handled
	Deliveries  int   // handler calls

	Lost        int      // offsets never handled nor dead-lettered (dead letters erased included)
	LostSamples []string // a few of them, described
	DeadLetters int      // offsets dead-lettered and never handled (in a dead-letter stream or the Kafka dead-letter topic at the end)
	DeadInKafka int      // of them, in the Kafka dead-letter topic
	DeadErased  int      // offsets seen dead-lettered, never handled, gone from Redis at the end (part of Lost)
	Poison      int      // poison records (failed on every delivery): each must end in a dead-letter stream
	SeqLost     int      // acknowledged records whose sequence number was never handled

	Duplicates  int            // handler calls beyond the first, per offset
	DupCauses   map[string]int // duplicates by cause
	Unexplained []string       // a few duplicates no fault explains, described

	Backwards   []string // commits that went backwards
	PastEnd     []string // commits beyond the log end
	PastUnacked []string // commits past an offset nobody had handled
	FinalOK     bool     // the commit equals the log end on every partition at the end
	FinalNote   string
}

// Ok reports whether the run kept every promise (Safe) and left no
// duplicate unexplained.
func (o *Outcome) Ok() bool { return o.Safe() && len(o.Unexplained) == 0 }

// Safe reports whether the run kept the promises of the design: nothing
// lost, no commit backwards, past the log end or past an unhandled offset,
// and the final commit at the log end. (A duplicate no fault explains is a
// finding, but at-least-once allows it.)
func (o *Outcome) Safe() bool {
	return o.Lost == 0 && o.SeqLost == 0 && len(o.Backwards) == 0 && len(o.PastEnd) == 0 &&
		len(o.PastUnacked) == 0 && o.FinalOK
}

// CheckInput is what Check needs.
type CheckInput struct {
	Began                           time.Time
	LogEnd                          []int64 // final log ends
	Committed                       []int64 // final commits (after the ingests stopped)
	Deliveries                      []Delivery
	Produced                        int
	ProducedAt                      map[int64]time.Time // nil: skip the sequence check
	DeadSeen                        map[pOff]time.Time  // every dead letter ever seen
	DeadAtEnd                       map[pOff]bool       // dead letters in Redis at the end or in Kafka
	DeadInKafka                     map[pOff]bool       // dead letters in the Kafka dead-letter topic at the end
	Poisoned                        map[pOff]int        // poison records the handler failed, with their calls
	PoisonSeqs                      map[int64]bool      // their sequence numbers (never handled, by design)
	Faults                          []FaultResult
	Backwards, PastEnd, PastUnacked []string
}

// Check computes the Outcome.
func Check(in CheckInput) *Outcome {
	o := &Outcome{Produced: in.Produced, Deliveries: len(in.Deliveries), DupCauses: map[string]int{}, Poison: len(in.Poisoned),
		Backwards: in.Backwards, PastEnd: in.PastEnd, PastUnacked: in.PastUnacked}
	byOff := map[pOff][]Delivery{}
	seqAt := map[int64]map[pOff]bool{}
	for _, d := range in.Deliveries {
		k := pOff{d.Partition, d.Offset}
		byOff[k] = append(byOff[k], d)
		if d.Seq >= 0 {
			if seqAt[d.Seq] == nil {
				seqAt[d.Seq] = map[pOff]bool{}
			}
			seqAt[d.Seq][k] = true
		}
	}
	o.Handled = len(byOff)
	for p, end := range in.LogEnd {
		o.Records += end
		for off := int64(0); off < end; off++ {
			k := pOff{p, off}
			if len(byOff[k]) > 0 {
				continue
			}
			if in.DeadAtEnd[k] || in.DeadInKafka[k] {
				o.DeadLetters++
				if in.DeadInKafka[k] {
					o.DeadInKafka++
				}
				continue
			}
			o.Lost++
			why := "never handled"
			if n := in.Poisoned[k]; n > 0 {
				why = fmt.Sprintf("a poison record (failed %d times) not in a dead-letter stream", n)
			}
			if seen, ok := in.DeadSeen[k]; ok {
				o.DeadErased++
				why = fmt.Sprintf("dead-lettered (seen %s), then erased from Redis", rel(in.Began, seen))
			}
			if len(o.LostSamples) < 10 {
				o.LostSamples = append(o.LostSamples, fmt.Sprintf("partition %d offset %d: %s", p, off, why))
			}
		}
	}
	for _, offs := range seqAt {
		o.KafkaCopies += len(offs) - 1
	}
	for seq := range in.ProducedAt {
		if seqAt[seq] == nil && !in.PoisonSeqs[seq] {
			o.SeqLost++
		}
	}
	faults := slices.Clone(in.Faults)
	sort.Slice(faults, func(i, j int) bool { return faults[i].Start.Before(faults[j].Start) })
	keys := make([]pOff, 0, len(byOff))
	for k, ds := range byOff {
		if len(ds) > 1 {
			keys = append(keys, k)
		}
	}
	sort.Slice(keys, func(i, j int) bool {
		return keys[i].p < keys[j].p || keys[i].p == keys[j].p && keys[i].off < keys[j].off
	})
	for _, k := range keys {
		ds := byOff[k]
		sort.SliceStable(ds, func(i, j int) bool { return ds[i].At.Before(ds[j].At) })
		for i := 1; i < len(ds); i++ {
			o.Duplicates++
			cause := Cause(ds[i-1], ds[i], faults)
			if cause == "" || strings.HasSuffix(cause, UnexpectedCause) {
				if cause == "" {
					cause = "unexplained"
				}
				if len(o.Unexplained) < 10 {
					o.Unexplained = append(o.Unexplained, describeDup(in.Began, k, ds[i-1], ds[i], faults))
				}
			}
			o.DupCauses[cause]++
		}
	}
	o.FinalOK = len(in.Committed) == len(in.LogEnd)
	var behind []string
	for p := range in.LogEnd {
		if p >= len(in.Committed) || in.Committed[p] != in.LogEnd[p] {
			o.FinalOK = false
			c := int64(-2)
			if p < len(in.Committed) {
				c = in.Committed[p]
			}
			behind = append(behind, fmt.Sprintf("p%d %d/%d", p, c, in.LogEnd[p]))
		}
	}
	if len(behind) > 0 {
		o.FinalNote = "final commit below the log end (committed/log end): " + strings.Join(behind, " ")
	}
	return o
}

// Cause names the fault that explains why the record handled in prev was
// handled again in cur, or "" if none does. A fresh entry (delivery 1) can
// only come from Redis losing data; a redelivery from a worker that stopped
// before its acknowledgement, or an acknowledgement lost on the way to Redis.
func Cause(prev, cur Delivery, faults []FaultResult) string {
	overlaps := func(f FaultResult, slack time.Duration) bool {
		return !f.Start.IsZero() && f.Skipped == "" && f.Err == "" &&
			!f.Start.After(cur.At) && !f.End.Add(slack).Before(prev.At)
	}
	find := func(slack time.Duration, ok func(FaultResult) bool) string {
		for _, f := range faults {
			if overlaps(f, slack) && ok(f) {
				return string(f.Kind)
			}
		}
		return ""
	}
	is := func(ks ...Kind) func(FaultResult) bool {
		return func(f FaultResult) bool { return slices.Contains(ks, f.Kind) }
	}
	// A paused worker that resumes finishes the handler call it had begun
	// on an entry another worker reclaimed meanwhile (so with a higher
	// delivery count): its copy is the older delivery.
	if cur.Deliveries < prev.Deliveries && cur.Worker != prev.Worker {
		if c := find(0, func(f FaultResult) bool { return f.Kind == WorkerStop && f.Target == cur.Worker }); c != "" {
			return c + " (stale copy finished after SIGCONT)"
		}
	}
	if cur.Deliveries == 1 && !cur.Replayed {
		// A new entry with the same offset: the stream was rebuilt. The
		// first of the two may itself be a copy read before the loss by a
		// worker that was paused through it and handled it afterwards
		// (beside the new entry): a loss up to 10 s before it counts.
		if c := find(10*time.Second, is(RedisEmpty, RedisOld)); c != "" {
			return c
		}
		return find(0, is(RedisSaved))
	}
	// The worker that handled it first died or stopped before its
	// acknowledgement reached Redis.
	if c := find(0, func(f FaultResult) bool {
		return (f.Kind == WorkerKill || f.Kind == WorkerStop) && f.Target == prev.Worker
	}); c != "" {
		return c
	}
	if c := find(0, is(RedisEmpty, RedisOld, RedisSaved)); c != "" {
		return c
	}
	// An acknowledgement lost on a cut connection: the worker's retry of it
	// may come after the entry was reclaimed (a second or two of slack).
	if c := find(2*time.Second, is(RedisCut, RedisDown, RedisFreeze)); c != "" {
		return c
	}
	// A graceful stop finishes and acknowledges what it handled: a
	// duplicate after one is a finding, named so that Check lists it.
	if c := find(0, func(f FaultResult) bool { return f.Kind == WorkerTerm && f.Target == prev.Worker }); c != "" {
		return c + " " + UnexpectedCause
	}
	return ""
}

// UnexpectedCause marks a cause that explains a duplicate the design says
// should not happen (Check lists them as findings).
const UnexpectedCause = "(graceful stop: not expected)"

func describeDup(began time.Time, k pOff, a, b Delivery, faults []FaultResult) string {
	s := fmt.Sprintf("partition %d offset %d: handled %s by %s (delivery %d), again %s by %s (delivery %d)",
		k.p, k.off, rel(began, a.At), a.Worker, a.Deliveries, rel(began, b.At), b.Worker, b.Deliveries)
	var in []string
	for _, f := range faults {
		if f.Skipped == "" && !f.Start.IsZero() && !f.Start.After(b.At) && !f.End.Before(a.At) {
			in = append(in, fmt.Sprintf("%s %s [%s–%s]", f.Kind, f.Target, rel(began, f.Start), rel(began, f.End)))
		}
	}
	if len(in) == 0 {
		return s + "; no fault in between"
	}
	return s + "; faults in between: " + strings.Join(in, ", ")
}

// rel formats t as seconds since began.
func rel(began, t time.Time) string {
	return fmt.Sprintf("t+%.1fs", t.Sub(began).Seconds())
}
