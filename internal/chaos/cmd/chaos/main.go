// Command chaos runs kbridge under a seeded fault schedule, or each fault
// type in isolation, and checks that nothing was lost. scripts/chaos.sh
// builds and runs it; see `scripts/chaos.sh --help`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/chaos"
)

func main() {
	// The harness's own Redis client meets Redis down on purpose; go-redis
	// would log every failed dial.
	redis.SetLogger(quiet{})
	os.Exit(run())
}

type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

func run() int {
	fs := flag.NewFlagSet("chaos", flag.ContinueOnError)
	var (
		seed       = fs.Uint64("seed", 1, "seed of the fault schedule")
		duration   = fs.Duration("duration", time.Minute, "length of the fault schedule")
		faults     = fs.Int("faults", 0, "faults in the schedule (default: one per 3 s of --duration)")
		kinds      = fs.String("kinds", "all", "fault kinds, comma-separated: "+kindNames())
		mode       = fs.String("mode", chaos.ModeSchedule, "schedule (random, overlapping) or isolate (each kind alone, until recovered)")
		reps       = fs.Int("reps", 3, "isolate: faults per kind")
		maxHold    = fs.Duration("max-hold", 10*time.Second, "longest SIGSTOP or network outage of the schedule")
		partitions = fs.Int("partitions", 8, "partitions of the topic")
		ingests    = fs.Int("ingests", 3, "kbridge ingest processes")
		workers    = fs.Int("workers", 3, "kbridge worker processes")
		rate       = fs.Int("rate", 500, "records per second")
		size       = fs.Int("size", 100, "value bytes")
		delay      = fs.Duration("delay", 2*time.Millisecond, "handler time per record")
		poison     = fs.Int64("poison", 0, "every Nth record fails on every delivery and must end in a dead-letter stream (0: none)")
		profile    = fs.String("profile", "defaults", "flags of ingests and workers: defaults, fast (short session and visibility timeouts) or proposed (the defaults docs/reliability.md proposes)")
		ingestArgs = fs.String("ingest-flags", "", "extra flags of every ingest (space-separated)")
		workerArgs = fs.String("worker-flags", "", "extra flags of every worker (space-separated)")
		dir        = fs.String("dir", "", "run directory: logs, data, report.json (default: a new temporary one)")
		bin        = fs.String("bin", "", "kbridge binary (required)")
		scripts    = fs.String("scripts", "scripts", "the repository's scripts/ directory")
		portBase   = fs.Int("port-base", 0, "use ports from here: +92..+95 Kafka and its proxy, +379/+380 Redis and its proxy, +80 handler (default: free ports)")
		doc        = fs.String("doc", "", "write the run's table into this file (docs/reliability.md)")
		drain      = fs.Duration("drain-within", 5*time.Minute, "longest wait for the commits to reach the log ends after the faults")
		recover    = fs.Duration("recover-within", 3*time.Minute, "isolate: longest wait for a recovery")
		command    = fs.String("command", "", "the command line to print in the report (default: this one)")
		revision   = fs.String("revision", "", "the revision of kbridge under test, for the report (scripts/chaos.sh passes git's)")
		verbose    = fs.Bool("v", false, "log every fault")
	)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: chaos --bin KBRIDGE [flags]\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	var probs []string
	ks, err := chaos.ParseKinds(*kinds)
	if err != nil {
		probs = append(probs, "--kinds: "+err.Error())
	}
	if *bin == "" {
		probs = append(probs, "--bin is required (go build -o /tmp/kbridge ./cmd/kbridge)")
	}
	if *mode != chaos.ModeSchedule && *mode != chaos.ModeIsolate {
		probs = append(probs, fmt.Sprintf("--mode %q: want schedule or isolate", *mode))
	}
	iargs, wargs, perr := chaos.Profile(*profile)
	if perr != nil {
		probs = append(probs, perr.Error())
	}
	if *partitions < 1 || *ingests < 1 || *workers < 1 || *rate < 1 {
		probs = append(probs, "--partitions, --ingests, --workers and --rate must be at least 1")
	}
	if len(probs) > 0 {
		fmt.Fprintf(os.Stderr, "chaos: invalid flags:\n  - %s\n", strings.Join(probs, "\n  - "))
		return 2
	}
	iargs = append(iargs, strings.Fields(*ingestArgs)...)
	wargs = append(wargs, strings.Fields(*workerArgs)...)
	if *faults == 0 {
		*faults = max(1, int(*duration/(3*time.Second)))
	}
	if *dir == "" {
		d, err := os.MkdirTemp("", "kbridge-chaos-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "chaos:", err)
			return 1
		}
		*dir = d
	}
	if *command == "" {
		*command = strings.Join(append([]string{"chaos"}, os.Args[1:]...), " ")
	}
	abs := func(p string) string { a, _ := filepath.Abs(p); return a }
	level := slog.LevelInfo
	if !*verbose {
		level = slog.LevelWarn
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 1
	}
	out, err := os.Create(filepath.Join(*dir, "services.log"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 1
	}
	defer out.Close()
	sc := chaos.SystemConfig{Bin: abs(*bin), Scripts: abs(*scripts), Dir: abs(*dir),
		Partitions: *partitions, Ingests: *ingests, Workers: *workers, Rate: *rate, Size: *size, Delay: *delay, Poison: *poison,
		IngestArgs: iargs, WorkerArgs: wargs, Log: log, Out: out}
	if b := *portBase; b > 0 {
		sc.KafkaPort, sc.KafkaProxyPort, sc.RedisPort, sc.RedisProxyPort, sc.HandlerPort = b+92, b+95, b+379, b+380, b+80
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fmt.Fprintf(os.Stderr, "chaos: %s mode, seed %d, run directory %s\n", *mode, *seed, *dir)
	rep, err := chaos.Run(ctx, chaos.RunConfig{System: sc, Mode: *mode, Seed: *seed, Duration: *duration,
		Faults: *faults, MaxHold: *maxHold, Kinds: ks, Reps: *reps, RecoverWithin: *recover,
		DrainWithin: *drain, Command: *command, Profile: *profile, Revision: *revision})
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 1
	}
	fmt.Println(rep.ScheduleText())
	fmt.Println(rep.Markdown())
	if *doc != "" {
		if err := chaos.UpdateDoc(*doc, rep); err != nil {
			fmt.Fprintln(os.Stderr, "chaos:", err)
			return 1
		}
		fmt.Fprintf(os.Stderr, "chaos: wrote %q into %s\n", rep.Title(), *doc)
	}
	if !rep.Passed() {
		return 1
	}
	return 0
}

func kindNames() string {
	var s []string
	for _, k := range chaos.AllKinds {
		s = append(s, string(k))
	}
	return strings.Join(s, ",") + ",none (or all)"
}
