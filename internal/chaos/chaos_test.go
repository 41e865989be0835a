package chaos

import (
	"context"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kbridge/kbridge/internal/testenv"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func envDuration(name string, def time.Duration) time.Duration {
	if v, err := time.ParseDuration(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// runDir is a directory for a run's logs, kept (and named) if the test
// fails or CHAOS_KEEP is set, removed if it passes.
func runDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "kbridge-"+strings.ReplaceAll(t.Name(), "/", "-")+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("CHAOS_KEEP") != "" {
			t.Logf("run directory kept: %s (process logs, report.json, deliveries.csv, evidence/)", dir)
			return
		}
		os.RemoveAll(dir)
	})
	return dir
}

type logWriter struct{ t *testing.T }

func (w logWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// TestQuickSeed is the CI run of scripts/chaos.sh: a 60-second seeded
// schedule of every fault but Kafka restarts (a broker's JVM takes tens of
// seconds to start here; bridge.TestKafkaRestart covers them) on a Kafka
// broker and a redis-server of the test's own, behind the proxies, with the
// fast profile. Nothing may be lost, every duplicate must have a cause,
// commits never go backwards nor past an unhandled offset, and the final
// commit is the log end. CHAOS_SEED picks another seed.
func TestQuickSeed(t *testing.T) {
	testenv.RequireReal(t, "starts a Kafka broker and a redis-server of its own, kills and restarts them and kbridge processes")
	seed := uint64(envInt("CHAOS_SEED", 1))
	ingestArgs, workerArgs, _ := Profile("fast")
	kinds, _ := ParseKinds("quick")
	ctx := context.Background()
	rep, err := Run(ctx, RunConfig{
		System: SystemConfig{Bin: testenv.BuildKbridge(t), Scripts: testenv.ScriptsDir(), Dir: runDir(t),
			Partitions: 4, Ingests: 2, Workers: 2, Rate: 300, Delay: 2 * time.Millisecond,
			IngestArgs: ingestArgs, WorkerArgs: workerArgs, Log: testLogger(t)},
		Mode: ModeSchedule, Seed: seed, Duration: envDuration("CHAOS_DURATION", time.Minute), Faults: 20, Kinds: kinds,
		MaxHold: 5 * time.Second, DrainWithin: 3 * time.Minute, Profile: "fast",
		Command: "CHAOS_SEED=" + strconv.FormatUint(seed, 10) + " go test -run TestQuickSeed ./internal/chaos/ (real services)",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("schedule:\n%s", rep.ScheduleText())
	t.Logf("report:\n%s", rep.Markdown())
	if !rep.Safe() {
		t.Errorf("the run did not keep every promise (see the findings above)")
	}
	for _, u := range rep.Outcome.Unexplained {
		// At-least-once allows it; the harness's verdict (scripts/chaos.sh)
		// fails on it, the CI test only reports it.
		t.Logf("FINDING: a duplicate no fault explains: %s", u)
	}
	if rep.Outcome.Handled == 0 || rep.Outcome.Records == 0 {
		t.Errorf("nothing flowed: %d records, %d handled", rep.Outcome.Records, rep.Outcome.Handled)
	}
	applied := 0
	for _, r := range rep.Results {
		if r.Skipped == "" && r.Err == "" {
			applied++
		}
	}
	if applied < 10 {
		t.Errorf("only %d of %d faults were applied", applied, len(rep.Results))
	}
}

// TestRecoveryIsolated measures the recovery time of each fault type alone
// (issue 11 point 5), on the flag defaults (CHAOS_PROFILE=fast for the fast
// profile), and prints the table of docs/reliability.md. In CI (no
// CHAOS_LONG) it runs once each the faults whose recovery the defaults set
// (an ingest's session timeout, a worker's visibility timeout, Redis back on
// an old snapshot), two that cost only backoff, and a Kafka broker stopped
// and started again (the CI seed has no broker restart); CHAOS_LONG=1 runs every
// kind twice (minutes); CHAOS_KINDS and CHAOS_REPS choose. scripts/chaos.sh
// --isolate does the same and writes the table into docs/reliability.md.
// Recovery times are printed, not asserted (a shared 2-core machine); what
// is asserted is that every fault recovered and every promise held.
func TestRecoveryIsolated(t *testing.T) {
	testenv.RequireReal(t, "starts a Kafka broker and a redis-server of its own")
	kindsEnv, reps := os.Getenv("CHAOS_KINDS"), envInt("CHAOS_REPS", 2)
	if os.Getenv("CHAOS_LONG") == "" {
		if kindsEnv == "" {
			kindsEnv = "none,ingest-kill,worker-kill,redis-old,redis-empty,kafka-cut,kafka-term"
		}
		reps = envInt("CHAOS_REPS", 1)
	}
	profile := os.Getenv("CHAOS_PROFILE")
	if profile == "" {
		profile = "defaults"
	}
	ingestArgs, workerArgs, err := Profile(profile)
	if err != nil {
		t.Fatal(err)
	}
	kinds, err := ParseKinds(kindsEnv)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Run(context.Background(), RunConfig{
		System: SystemConfig{Bin: testenv.BuildKbridge(t), Scripts: testenv.ScriptsDir(), Dir: runDir(t),
			Partitions: 8, Ingests: 3, Workers: 3, Rate: 500, Delay: 2 * time.Millisecond,
			IngestArgs: ingestArgs, WorkerArgs: workerArgs, Log: testLogger(t)},
		Mode: ModeIsolate, Kinds: kinds, Reps: reps, Profile: profile,
		Command: "CHAOS_KINDS=" + kindsEnv + " CHAOS_REPS=" + strconv.Itoa(reps) + " go test -run TestRecoveryIsolated ./internal/chaos/ (real services)",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("faults:\n%s", rep.ScheduleText())
	t.Logf("report:\n%s", rep.Markdown())
	if !rep.Safe() {
		t.Errorf("the run did not keep every promise (see the findings above)")
	}
	for _, ks := range rep.ByKind() {
		if ks.Never > 0 {
			t.Errorf("%s: %d of %d faults never recovered", ks.Kind, ks.Never, ks.Applied)
		}
	}
}

// TestRollingRestart1000: three `kbridge ingest` processes share a
// 1,000-partition topic under load; each is restarted in turn with SIGTERM,
// then, in a second round, with SIGKILL (issue 11 point 3). Nothing may be
// lost, no record may be handled twice (no worker and no Redis fault here:
// a second delivery could only be a duplicate entry, which the conditional
// append rules out), commits never go backwards, and each hand-over's time
// is printed. Bigger on demand: CHAOS_ROLLING_PARTITIONS, CHAOS_ROLLING_RATE,
// CHAOS_ROLLING_INGEST_FLAGS (e.g. "--session-timeout 10s").
func TestRollingRestart1000(t *testing.T) {
	testenv.RequireReal(t, "SIGTERM and SIGKILL of kbridge ingest processes on a 1,000-partition topic")
	partitions := envInt("CHAOS_ROLLING_PARTITIONS", 1000)
	rate := envInt("CHAOS_ROLLING_RATE", 2000)
	ctx := context.Background()
	began := time.Now()
	brokers := testenv.Kafka(t)
	redis := testenv.NewRedis(t)
	sys, err := StartSystem(ctx, SystemConfig{Bin: testenv.BuildKbridge(t), Dir: runDir(t),
		Partitions: partitions, Ingests: 3, Workers: 2, Rate: rate,
		IngestArgs: strings.Fields(os.Getenv("CHAOS_ROLLING_INGEST_FLAGS")),
		WorkerArgs: []string{"--concurrency", "64"},
		Brokers:    brokers, RedisAddr: redis.Addr, Name: testenv.Name(t), Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer sys.Close()
	sys.StartLoad(rate)
	if err := sys.WaitFlowing(ctx, 5*time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := sys.WaitStable(ctx, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d partitions flowing through 3 ingests after %v", partitions, time.Since(began).Round(time.Millisecond))
	var all []Handover
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		hs := sys.RollingRestart(ctx, sig, 3*time.Minute)
		for _, h := range hs {
			t.Logf("hand-over: %s", h)
			if h.Err != "" {
				t.Errorf("%s %s: %s", h.Signal, h.Proc, h.Err)
			}
		}
		all = append(all, hs...)
	}
	o, shutdowns, err := sys.Finish(ctx, began, 3*time.Minute)
	if err != nil {
		t.Errorf("finish: %v", err)
	}
	for _, sd := range shutdowns {
		if sd.Err != "" || sd.Code != 0 {
			t.Errorf("%s: exit %d after SIGTERM in %v %s", sd.Proc, sd.Code, sd.Took, sd.Err)
		}
	}
	if o == nil {
		return
	}
	t.Logf("rolling restarts on %d partitions at %d records/s: %d records, %d handled, %d handler calls, lost=%d duplicates=%d, %d extra Kafka copies",
		partitions, rate, o.Records, o.Handled, o.Deliveries, o.Lost, o.Duplicates, o.KafkaCopies)
	if o.Lost != 0 || o.SeqLost != 0 {
		t.Errorf("lost %d records (%d acknowledged ones never handled): %v", o.Lost, o.SeqLost, o.LostSamples)
	}
	if o.Duplicates != 0 {
		t.Errorf("%d records handled twice, want 0: %v; e.g. %v", o.Duplicates, o.DupCauses, o.Unexplained)
	}
	for _, f := range append(append(append([]string{}, o.Backwards...), o.PastEnd...), o.PastUnacked...) {
		t.Errorf("commit: %s", f)
	}
	if !o.FinalOK {
		t.Errorf("%s", o.FinalNote)
	}
}
