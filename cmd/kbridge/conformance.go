package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"regexp"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/kbridge/kbridge/internal/conformance"
)

// conformanceCommand is "kbridge conformance": the wire contract's
// conformance kit, for workers written in any language.
func conformanceCommand() *cli.Command {
	return &cli.Command{
		Name:      "conformance",
		Usage:     "check a worker written in any language against the wire contract (docs/wire.md), on a real Redis",
		UsageText: "kbridge conformance [options] -- CMD [ARGS...]",
		Description: `Runs the worker command CMD through scenarios against the Redis of --redis-url
(a single redis-server 7.0 or later; the kit writes only keys under prefixes
of its own, kbconf-*, and deletes them at the end) and prints which rules of
docs/wire.md pass. Exit status 0 when none fails, 1 otherwise, 2 for bad flags.

The kit starts CMD with KBRIDGE_REDIS_URL, KBRIDGE_PREFIX, KBRIDGE_GROUP,
KBRIDGE_CONSUMER, KBRIDGE_VISIBILITY_TIMEOUT_MS, KBRIDGE_MAX_DELIVERIES,
KBRIDGE_BACKOFF_MS and KBRIDGE_SHUTDOWN_TIMEOUT_MS in its environment; the
worker's handler must act as each record's value says ("ok", "fail",
"sleep:<ms>", "sleepfail:<ms>", "wait:<name>", "waitfail:<name>", or one per
delivery: "fail|ok") and append a JSON event per start and end to the file
$CONFORMANCE_LOG. See "The conformance kit" in docs/wire.md. "kbridge conformance-handler" is such a
handler for workers that run a command per record (kbridge worker --exec).

Scenarios: version, plain, decode, malformed, retry, ownership, lease,
reclaim, sigkill, replay, shutdown, shutdown-timeout, each followed by the
loss check (about half a minute for a worker that passes, --parallel 4).

Examples:
   kbridge conformance --redis-url redis://127.0.0.1:6379/0 -- python3 examples/python/kbridge_worker.py --conformance
   kbridge conformance -- sh examples/shell/worker.sh
   kbridge conformance --run 'lease|sigkill' -- ./my-worker`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "run", EnvVars: []string{"KBRIDGE_CONFORMANCE_RUN"}, Usage: "only the scenarios whose name matches `REGEXP`"},
			&cli.DurationFlag{Name: "visibility-timeout", Value: conformance.DefaultVisibilityTimeout, EnvVars: []string{"KBRIDGE_CONFORMANCE_VISIBILITY_TIMEOUT"}, Usage: "the group's visibility timeout given to the worker"},
			&cli.IntFlag{Name: "max-deliveries", Value: conformance.DefaultMaxDeliveries, EnvVars: []string{"KBRIDGE_CONFORMANCE_MAX_DELIVERIES"}, Usage: "max deliveries given to the worker (at least 2)"},
			&cli.DurationFlag{Name: "backoff", Value: conformance.DefaultBackoff, EnvVars: []string{"KBRIDGE_CONFORMANCE_BACKOFF"}, Usage: "first retry backoff given to the worker"},
			&cli.DurationFlag{Name: "shutdown-timeout", Value: conformance.DefaultShutdownTimeout, EnvVars: []string{"KBRIDGE_CONFORMANCE_SHUTDOWN_TIMEOUT"}, Usage: "shutdown timeout given to the worker"},
			&cli.DurationFlag{Name: "patience", Value: conformance.DefaultPatience, EnvVars: []string{"KBRIDGE_CONFORMANCE_PATIENCE"}, Usage: "how long to wait for what needs no reclaim (a record handled, a dead letter, an exit)"},
			&cli.IntFlag{Name: "parallel", Value: conformance.DefaultParallel, EnvVars: []string{"KBRIDGE_CONFORMANCE_PARALLEL"}, Usage: "how many scenarios run at once (1: one after the other)"},
			&cli.StringFlag{Name: "dir", EnvVars: []string{"KBRIDGE_CONFORMANCE_DIR"}, Usage: "keep the worker output and handler events in `DIR` (default: a temporary directory, kept only on failure)"},
			&cli.BoolFlag{Name: "keep", EnvVars: []string{"KBRIDGE_CONFORMANCE_KEEP"}, Usage: "leave the kit's Redis keys and files in place"},
			&cli.BoolFlag{Name: "json", EnvVars: []string{"KBRIDGE_CONFORMANCE_JSON"}, Usage: "print the report as JSON"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, EnvVars: []string{"KBRIDGE_CONFORMANCE_QUIET"}, Usage: "no progress lines on stderr"},
		},
		Action: runConformance,
	}
}

func runConformance(c *cli.Context) error {
	var bad []error
	cfg := conformance.Config{
		RedisURL:          c.String("redis-url"),
		Command:           c.Args().Slice(),
		VisibilityTimeout: c.Duration("visibility-timeout"),
		MaxDeliveries:     c.Int("max-deliveries"),
		Backoff:           c.Duration("backoff"),
		ShutdownTimeout:   c.Duration("shutdown-timeout"),
		Patience:          c.Duration("patience"),
		Parallel:          c.Int("parallel"),
		Dir:               c.String("dir"),
		Keep:              c.Bool("keep"),
		Progress:          os.Stderr,
	}
	if c.Bool("quiet") {
		cfg.Progress = io.Discard
	}
	if c.Bool("redis-cluster") {
		bad = append(bad, errors.New("--redis-cluster: the kit needs a single Redis"))
	}
	bad = append(bad, redisFlagsNotTaken(c, "the conformance kit gives its worker only a Redis URL (rediss:// with the system's CAs; a password inside it, best in KBRIDGE_REDIS_URL)")...)
	if r := c.String("run"); r != "" {
		re, err := regexp.Compile(r)
		if err != nil {
			bad = append(bad, fmt.Errorf("--run %q: %v", r, err))
		}
		cfg.Run = re
	}
	if err := errors.Join(append(bad, cfg.Validate())...); err != nil {
		return cli.Exit(err.Error(), 2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	report, err := conformance.Run(ctx, cfg)
	if report == nil {
		return cli.Exit(err.Error(), 1)
	}
	if c.Bool("json") {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		_ = enc.Encode(report)
	} else {
		report.Print(c.App.Writer)
	}
	if err != nil {
		return cli.Exit("conformance run stopped: "+err.Error(), 1)
	}
	if !report.Passed() {
		return cli.Exit("", 1)
	}
	return nil
}

// conformanceHandlerCommand is the kit's handler for workers that run a
// command per record, the way "kbridge worker --exec" does.
func conformanceHandlerCommand() *cli.Command {
	return &cli.Command{
		Name:      "conformance-handler",
		Usage:     "the conformance kit's handler, for workers that run a command per record (kbridge worker --exec)",
		UsageText: "kbridge worker --exec 'kbridge conformance-handler'   (under kbridge conformance)",
		Description: `Reads the record the way "kbridge worker --exec" passes it (the value on stdin;
KBRIDGE_TOPIC, KBRIDGE_PARTITION, KBRIDGE_OFFSET, KBRIDGE_TIMESTAMP,
KBRIDGE_KEY_B64, KBRIDGE_KEY_NULL, KBRIDGE_VALUE_NULL, KBRIDGE_HEADERS,
KBRIDGE_DELIVERIES, KBRIDGE_STREAM, KBRIDGE_ID, KBRIDGE_REPLAYED), appends its
start and end events to $CONFORMANCE_LOG, acts as the value says and exits 0
(done) or 1 (failed).

Examples:
   kbridge conformance -- kbridge worker --exec 'kbridge conformance-handler' ...   (see examples/conformance/kbridge-worker.sh)
   kbridge conformance -- env HANDLER='kbridge conformance-handler' sh examples/shell/worker.sh`,
		HideHelpCommand: true,
		Action: func(c *cli.Context) error {
			value, err := io.ReadAll(os.Stdin)
			if err != nil {
				return cli.Exit(err.Error(), 2)
			}
			code, err := conformance.ExecHandler(os.Environ(), value)
			if err != nil {
				return cli.Exit(err.Error(), code)
			}
			if code != 0 {
				return cli.Exit("", code)
			}
			return nil
		},
	}
}
