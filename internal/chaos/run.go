package chaos

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/kbridge/kbridge/internal/wire"
)

// Modes of a run.
const (
	ModeSchedule = "schedule" // a seeded random schedule of overlapping faults
	ModeIsolate  = "isolate"  // each fault kind alone, one at a time, until recovered
)

// RunConfig configures a chaos run.
type RunConfig struct {
	System SystemConfig
	Mode   string
	Seed   uint64

	// Schedule mode.
	Duration time.Duration // faults are spread over it
	Faults   int           // how many
	MaxHold  time.Duration

	Kinds []Kind // faults to use (both modes)

	// Isolate mode.
	Reps          int           // faults per kind
	RecoverWithin time.Duration // longest wait for a recovery

	DrainWithin time.Duration // longest wait for the commits to reach the log ends
	Command     string        // the command line, for the report
	Profile     string        // name of the flag profile, for the report
	Revision    string        // the revision under test, for the report
}

// Report is the result of a run.
type Report struct {
	Mode, Profile, Command string
	Revision               string
	Seed                   uint64
	Duration               time.Duration
	Partitions, Ingests    int
	Workers, Rate          int
	IngestArgs, WorkerArgs []string
	Began, Ended           time.Time
	Dir                    string

	Schedule        []Fault
	Results         []FaultResult
	Heal            []string
	Drain           time.Duration
	DrainErr        string
	Shutdowns       []Shutdown
	Unexpected      []string
	Samples         int
	SampleErrors    int
	ProducerRetries int64
	BadRequests     []string
	Outcome         *Outcome
}

// Run starts the system, applies the faults, drains, stops everything and
// checks the ledger.
func Run(ctx context.Context, cfg RunConfig) (*Report, error) {
	sc := cfg.System
	if cfg.DrainWithin <= 0 {
		cfg.DrainWithin = 5 * time.Minute
	}
	if cfg.RecoverWithin <= 0 {
		cfg.RecoverWithin = 3 * time.Minute
	}
	rep := &Report{Mode: cfg.Mode, Profile: cfg.Profile, Command: cfg.Command, Revision: cfg.Revision, Seed: cfg.Seed, Duration: cfg.Duration,
		Partitions: sc.Partitions, Ingests: sc.Ingests, Workers: sc.Workers, Rate: sc.Rate,
		IngestArgs: sc.IngestArgs, WorkerArgs: sc.WorkerArgs, Dir: sc.Dir}
	log := sc.Log
	sys, err := StartSystem(ctx, sc)
	if err != nil {
		return nil, err
	}
	defer sys.Close()
	if log == nil {
		log = sys.log
	}
	rep.Began = time.Now()
	sys.StartLoad(sc.Rate)
	if err := sys.WaitFlowing(ctx, 2*time.Minute); err != nil {
		return nil, err
	}
	log.Info("pipeline flowing", "after", time.Since(rep.Began).Round(time.Millisecond))

	switch cfg.Mode {
	case ModeSchedule:
		rep.Schedule = NewSchedule(ScheduleConfig{Seed: cfg.Seed, Duration: cfg.Duration, Faults: cfg.Faults,
			Kinds: cfg.Kinds, Ingests: sc.Ingests, Workers: sc.Workers, MaxHold: cfg.MaxHold})
		rep.Results = runSchedule(ctx, sys, rep.Schedule)
	case ModeIsolate:
		// The baseline first: the pipeline's own latency.
		if !slices.Contains(cfg.Kinds, None) {
			cfg.Kinds = append([]Kind{None}, cfg.Kinds...)
		}
		rep.Results = runIsolated(ctx, sys, cfg)
	default:
		return nil, fmt.Errorf("unknown mode %q", cfg.Mode)
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	rep.Heal = sys.Heal(ctx)
	sys.StopLoad()
	log.Info("faults over; draining", "produced", sys.Ledger.ProducedCount(), "handled", sys.Ledger.Handled())
	rep.Drain, err = sys.Drain(ctx, cfg.DrainWithin)
	if err != nil {
		rep.DrainErr = err.Error()
		log.Error("drain", "err", err)
	} else {
		log.Info("drained", "took", rep.Drain.Round(time.Millisecond))
	}
	rep.Shutdowns = sys.StopProcs(60 * time.Second)
	for _, p := range append(clone(sys.Ingests), sys.Workers...) {
		rep.Unexpected = append(rep.Unexpected, p.Unexpected()...)
	}
	sys.Ledger.ScanDeadLetters(ctx, sys.rdb, sys.Prefix, sc.Partitions)
	deadAtEnd, inKafka := sys.deadAtEnd(ctx)
	var committed, logEnd []int64
	for range 20 {
		if committed, logEnd, err = sys.Monitor.Read(ctx); err == nil {
			break
		}
		sleepCtx(ctx, 500*time.Millisecond)
	}
	rep.Ended = time.Now()
	samples := sys.Monitor.Samples()
	n, errs, _ := sys.Monitor.Stats()
	rep.Samples, rep.SampleErrors = n, errs
	rep.ProducerRetries = sys.Producer.Retries()
	rep.BadRequests = sys.Ledger.BadRequests()
	measure(rep.Results, samples, sc.Rate)
	back, past, unacked := sys.Monitor.CommitFindings(inKafka)
	sys.Ledger.mu.Lock()
	producedAt := make(map[int64]time.Time, len(sys.Ledger.produced))
	for k, v := range sys.Ledger.produced {
		producedAt[k] = v
	}
	sys.Ledger.mu.Unlock()
	poisoned, poisonSeqs := sys.Ledger.Poisoned()
	rep.Outcome = Check(CheckInput{Began: rep.Began, LogEnd: logEnd, Committed: committed,
		Deliveries: sys.Ledger.Deliveries(), Produced: len(producedAt), ProducedAt: producedAt,
		DeadSeen: sys.Ledger.Dead(), DeadAtEnd: deadAtEnd, DeadInKafka: inKafka, Poisoned: poisoned, PoisonSeqs: poisonSeqs, Faults: rep.Results,
		Backwards: back, PastEnd: past, PastUnacked: unacked})
	if err := writeEvidence(sys, rep); err != nil {
		log.Warn("evidence", "err", err)
	}
	return rep, nil
}

// deadAtEnd returns the dead letters that exist now: in the dead-letter
// streams in Redis, or in the Kafka dead-letter topic (the ingest exports
// them there, so that a Redis that loses its data does not lose them); and
// those in Kafka alone, separately.
func (s *System) deadAtEnd(ctx context.Context) (all, inKafka map[pOff]bool) {
	l := NewLedger(s.Topic)
	l.ScanDeadLetters(ctx, s.rdb, s.Prefix, s.cfg.Partitions)
	all = map[pOff]bool{}
	for k := range l.dead {
		all[k] = true
	}
	inKafka, err := KafkaDeadLetters(ctx, s.client, wire.DLQTopic(wire.DefaultDLQTopic, s.Topic), s.Topic)
	if err != nil {
		s.log.Warn("reading the dead-letter topic", "err", err)
	}
	for k := range inKafka {
		all[k] = true
	}
	return all, inKafka
}

// runSchedule applies each fault at its time, each in a goroutine of its own
// (faults overlap), and waits for all of them.
func runSchedule(ctx context.Context, sys *System, sched []Fault) []FaultResult {
	began := time.Now()
	var mu sync.Mutex
	var out []FaultResult
	var wg sync.WaitGroup
	for _, f := range sched {
		at := f.At - f.Lag // a redis-old fault saves its snapshot Lag before
		sleepCtx(ctx, time.Until(began.Add(at)))
		if ctx.Err() != nil {
			break
		}
		sys.log.Info("fault", "fault", f.String())
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := sys.Apply(ctx, f)
			mu.Lock()
			out = append(out, r)
			mu.Unlock()
		}()
	}
	wg.Wait()
	sort.Slice(out, func(i, j int) bool { return out[i].At < out[j].At })
	return out
}

// isolatedHold is the Hold of each kind in isolate mode.
func isolatedHold(k Kind) (hold, lag time.Duration) {
	switch k {
	case IngestStop, WorkerStop, KafkaDown, RedisDown, KafkaFreeze, RedisFreeze:
		return 5 * time.Second, 0
	case RedisOld:
		return time.Second, 5 * time.Second
	case KafkaCut, RedisCut, None:
		return 0, 0
	}
	return time.Second, 0
}

// runIsolated applies each kind Reps times, one fault at a time, each after
// the previous one recovered and the lag came back down.
func runIsolated(ctx context.Context, sys *System, cfg RunConfig) []FaultResult {
	var out []FaultResult
	began := time.Now()
	reps := max(cfg.Reps, 1)
	stuck := ""
	for _, k := range cfg.Kinds {
		for i := range reps {
			if ctx.Err() != nil {
				return out
			}
			hold, lag := isolatedHold(k)
			f := Fault{At: time.Since(began).Round(100 * time.Millisecond), Kind: k, Target: i, Hold: hold, Lag: lag}
			if stuck != "" {
				// Measuring more faults on a system that did not recover
				// would measure nothing.
				out = append(out, FaultResult{Fault: f, Target: k.service(), Skipped: stuck})
				continue
			}
			sys.log.Info("fault", "fault", f.String())
			r := sys.Apply(ctx, f)
			if r.Skipped == "" && r.Point != nil {
				deadline := time.Now().Add(cfg.RecoverWithin)
				recovered := false
				for ctx.Err() == nil && time.Now().Before(deadline) {
					if _, recovered = Recovery(sys.Monitor.Samples(), r.Start, r.Point); recovered {
						break
					}
					sleepCtx(ctx, 250*time.Millisecond)
				}
				if !recovered && ctx.Err() == nil {
					stuck = fmt.Sprintf("not applied: the %s fault before it did not recover within %v", k, cfg.RecoverWithin)
					sys.log.Error("fault did not recover; skipping the rest", "fault", f.String(), "within", cfg.RecoverWithin)
					out = append(out, r)
					continue
				}
			}
			// Let the lag come back down before the next fault, and keep
			// a few seconds of normal running between faults.
			settle := time.Now().Add(cfg.RecoverWithin)
			for ctx.Err() == nil && time.Now().Before(settle) {
				if last, ok := sys.Monitor.Last(); ok && last.Lag() <= int64(2*sys.cfg.Rate) {
					break
				}
				sleepCtx(ctx, 250*time.Millisecond)
			}
			sleepCtx(ctx, 3*time.Second)
			out = append(out, r)
		}
	}
	return out
}

// measure fills in the recovery times of each result from the samples.
func measure(results []FaultResult, samples []Sample, rate int) {
	for i := range results {
		r := &results[i]
		if r.Skipped != "" || r.Point == nil || r.Start.IsZero() {
			continue
		}
		if t, ok := Recovery(samples, r.Start, r.Point); ok {
			r.Recovered = t
		}
		var lag0 int64 = -1
		for _, s := range samples {
			if s.At.Before(r.Start) {
				lag0 = s.Lag()
			}
		}
		if lag0 < 0 {
			continue
		}
		if r.Recovered.IsZero() {
			continue
		}
		// Caught up: recovered, and the backlog back to what it was.
		limit := max(2*lag0, int64(rate))
		for _, s := range samples {
			if !s.At.Before(r.Recovered) && !s.At.Before(r.End) && s.Lag() <= limit {
				r.CaughtUp = s.At
				break
			}
		}
	}
}

// writeEvidence writes the run's files: the report as JSON, the schedule,
// and for each fault the log lines of every process from the fault to its
// recovery.
func writeEvidence(sys *System, rep *Report) error {
	dir := rep.Dir
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "report.json"), b, 0o644); err != nil {
		return err
	}
	if err := writeDeliveries(filepath.Join(dir, "deliveries.csv"), rep.Began, sys.Ledger.Deliveries()); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, "evidence"), 0o755); err != nil {
		return err
	}
	procs := append(clone(sys.Ingests), sys.Workers...)
	logs := map[string][]string{}
	for _, p := range procs {
		b, err := os.ReadFile(p.LogPath)
		if err != nil {
			continue
		}
		logs[p.Name] = strings.Split(string(b), "\n")
	}
	for i, r := range rep.Results {
		if r.Start.IsZero() {
			continue
		}
		from := r.Start.Add(-500 * time.Millisecond)
		to := r.End.Add(5 * time.Second)
		if !r.Recovered.IsZero() {
			to = r.Recovered.Add(time.Second)
		}
		var sb strings.Builder
		fmt.Fprintf(&sb, "fault %s target %s start %s end %s recovered %s\n", r.Fault.String(), r.Target,
			r.Start.Format(time.RFC3339Nano), r.End.Format(time.RFC3339Nano), r.Recovered.Format(time.RFC3339Nano))
		for _, p := range procs {
			for _, line := range logs[p.Name] {
				t, ok := lineTime(line)
				if ok && !t.Before(from) && !t.After(to) {
					sb.WriteString(p.Name + " " + line + "\n")
				}
			}
		}
		name := fmt.Sprintf("%03d-%s.log", i, r.Kind)
		if err := os.WriteFile(filepath.Join(dir, "evidence", name), []byte(sb.String()), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// lineTime reads the "time" of a JSON log line.
func lineTime(line string) (time.Time, bool) {
	i := strings.Index(line, `"time":"`)
	if i < 0 {
		return time.Time{}, false
	}
	rest := line[i+8:]
	j := strings.IndexByte(rest, '"')
	if j < 0 {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, rest[:j])
	return t, err == nil
}

// writeDeliveries writes the ledger of deliveries as CSV, for post-mortems.
func writeDeliveries(path string, began time.Time, ds []Delivery) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	fmt.Fprintln(w, "seconds,partition,offset,seq,delivery,worker")
	for _, d := range ds {
		fmt.Fprintf(w, "%.3f,%d,%d,%d,%d,%s\n", d.At.Sub(began).Seconds(), d.Partition, d.Offset, d.Seq, d.Deliveries, d.Worker)
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
