package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/kbridge/kbridge/worker"
)

// workerCommand is "kbridge worker": a worker that runs a command or POSTs
// to a URL for each record, for people who do not write Go.
func workerCommand() *cli.Command {
	return &cli.Command{
		Name:  "worker",
		Usage: "process the records in Redis by running a command (--exec) or POSTing to a URL (--http) for each",
		UsageText: `kbridge worker --exec CMD [options]
   kbridge worker --http URL [options]`,
		Description: `Reads every partition stream the ingest registered (new ones are picked up
while running) in a worker group, --concurrency records at a time, and hands
each record to a command or an HTTP endpoint. Start as many workers as you
like, on any machine that reaches Redis.

Scheduling: the partitions with records share the --concurrency slots by
handler time: while others wait, each runs at most its share
(concurrency / partitions with records), so a slow or failing partition
cannot hold back the others. A record waiting for a retry gives its slot
back. Up to --read-ahead records are read ahead of the handlers. The records
of a worker that died are reclaimed within --visibility-timeout +
--reclaim-interval, however busy the live workers are.

--exec CMD runs "sh -c CMD" per record: the value on stdin; KBRIDGE_TOPIC,
KBRIDGE_PARTITION, KBRIDGE_OFFSET, KBRIDGE_KEY, KBRIDGE_KEY_B64,
KBRIDGE_TIMESTAMP, KBRIDGE_HEADERS, KBRIDGE_DELIVERIES, ... in the environment.
Exit status 0 = done, anything else = failed.

--http URL POSTs the value with Kbridge-Topic, Kbridge-Partition,
Kbridge-Offset, Kbridge-Key (base64), ... headers. 2xx = done. 429, 502, 503,
504 or no connection (refused, DNS, connect timeout) = the endpoint is
unavailable: back off (Retry-After is honoured, seconds or HTTP date) and retry
without counting a delivery, for up to --max-transient-time per record (after
that these count too, so a dead endpoint still ends in the dead-letter
stream). Redirects (3xx) are not followed (after a 301, 302 or 303 a
client would send the POST again as a GET without its body): they are
failures; give the final URL. Anything else = failed.

A failed record is retried with exponential backoff; after --max-deliveries it
goes to the dead-letter stream (see "kbridge dlq"). A worker that dies has its
records reclaimed by the others after --visibility-timeout. SIGTERM or SIGINT
stops reading, lets running handlers finish (up to --shutdown-timeout),
acknowledges and exits 0 (1 if handlers were still running at the end of
--shutdown-timeout: their records are reclaimed by the other workers); a
second signal exits at once (130).

Examples:
   kbridge worker --exec 'jq -c . >> /var/log/orders.jsonl' --concurrency 4
   kbridge worker --http http://localhost:8080/orders --concurrency 64 --topics orders
   KBRIDGE_REDIS_URL=redis://redis:6379/0 KBRIDGE_WORKER_EXEC='./handle.sh' kbridge worker`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "exec", EnvVars: []string{"KBRIDGE_WORKER_EXEC"}, Usage: "run `CMD` (with sh -c) for each record"},
			&cli.StringFlag{Name: "http", EnvVars: []string{"KBRIDGE_WORKER_HTTP"}, Usage: "POST each record to `URL`"},
			&cli.DurationFlag{Name: "handler-timeout", Value: 5 * time.Minute, EnvVars: []string{"KBRIDGE_WORKER_HANDLER_TIMEOUT"},
				Usage: "longest one command run or HTTP request may take (0 = no limit for --exec)"},
			&cli.StringFlag{Name: "group", Value: worker.DefaultGroup, EnvVars: []string{"KBRIDGE_WORKER_GROUP"},
				Usage: "worker group to read in; must be one of the ingest's --worker-groups"},
			&cli.StringFlag{Name: "consumer", EnvVars: []string{"KBRIDGE_WORKER_CONSUMER"},
				Usage: "consumer name, unique per process (default <hostname>-<pid>-<random>)"},
			&cli.StringSliceFlag{Name: "topics", EnvVars: []string{"KBRIDGE_WORKER_TOPICS"}, Usage: "only the streams of these topics (default: all)"},
			&cli.IntFlag{Name: "concurrency", Value: worker.DefaultConcurrency, EnvVars: []string{"KBRIDGE_WORKER_CONCURRENCY"},
				Usage: "records processed at the same time"},
			&cli.IntFlag{Name: "read-ahead", EnvVars: []string{"KBRIDGE_WORKER_READ_AHEAD"},
				Usage: "records read ahead of the handlers, so that a freed slot does not wait for Redis (default: --concurrency)"},
			&cli.DurationFlag{Name: "visibility-timeout", Value: worker.DefaultVisibilityTimeout, EnvVars: []string{"KBRIDGE_WORKER_VISIBILITY_TIMEOUT"},
				Usage: "a record held this long by a worker that stopped extending its lease is reclaimed by the others"},
			&cli.DurationFlag{Name: "reclaim-interval", EnvVars: []string{"KBRIDGE_WORKER_RECLAIM_INTERVAL"},
				Usage: "how often to look for records of dead workers (default visibility-timeout/4, at most 5s)"},
			&cli.IntFlag{Name: "max-deliveries", Value: worker.DefaultMaxDeliveries, EnvVars: []string{"KBRIDGE_WORKER_MAX_DELIVERIES"},
				Usage: "deliveries after which a failing record is dead-lettered"},
			&cli.DurationFlag{Name: "backoff-min", Value: worker.DefaultBackoffMin, EnvVars: []string{"KBRIDGE_WORKER_BACKOFF_MIN"},
				Usage: "wait before the first retry; doubles per delivery"},
			&cli.DurationFlag{Name: "backoff-max", Value: worker.DefaultBackoffMax, EnvVars: []string{"KBRIDGE_WORKER_BACKOFF_MAX"},
				Usage: "longest wait between retries"},
			&cli.DurationFlag{Name: "max-transient-time", Value: worker.DefaultMaxTransientTime, EnvVars: []string{"KBRIDGE_WORKER_MAX_TRANSIENT_TIME"},
				Usage: "how long a record may back off on an unavailable endpoint (HTTP 429/502/503/504, refused) without counting deliveries"},
			&cli.DurationFlag{Name: "shutdown-timeout", Value: worker.DefaultShutdownTimeout, EnvVars: []string{"KBRIDGE_WORKER_SHUTDOWN_TIMEOUT"},
				Usage: "on SIGTERM, how long running handlers may take to finish"},
			&cli.DurationFlag{Name: "discovery-interval", Value: worker.DefaultDiscoveryInterval, EnvVars: []string{"KBRIDGE_WORKER_DISCOVERY_INTERVAL"},
				Usage: "how often to look for new partition streams"},
			metricsFlag("KBRIDGE_WORKER_METRICS_ADDR"),
		},
		Action: runWorker,
	}
}

func runWorker(c *cli.Context) error {
	// Every problem of the flags is collected and reported at once (exit
	// 2), before anything connects.
	var bad []error
	if c.NArg() > 0 {
		bad = append(bad, fmt.Errorf("worker takes no arguments, got %q (quote the --exec command)", c.Args().Slice()))
	}
	var (
		h           worker.Handler
		eh          *worker.ExecHandler
		onForceExit func() // a second signal: kill the --exec commands, which run in process groups of their own
	)
	timeout := c.Duration("handler-timeout")
	if timeout < 0 {
		bad = append(bad, fmt.Errorf("--handler-timeout %v must not be negative", timeout))
	}
	switch execCmd, httpURL := c.String("exec"), c.String("http"); {
	case execCmd != "" && httpURL != "":
		bad = append(bad, errors.New("--exec and --http exclude each other: pick one"))
	case execCmd != "":
		eh = &worker.ExecHandler{Command: execCmd, Timeout: max(timeout, 0)}
		h, onForceExit = eh.Handle, eh.KillAll
	case httpURL != "":
		u, err := url.Parse(httpURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad = append(bad, fmt.Errorf("--http %s: want an http:// or https:// URL", redactURL(httpURL)))
		}
		if timeout == 0 {
			bad = append(bad, errors.New("--handler-timeout must be above 0 with --http"))
		}
		h = worker.NewHTTPHandler(httpURL, timeout).Handle
	default:
		bad = append(bad, errors.New("give --exec CMD or --http URL (see --help; Go programs use the worker package)"))
	}
	if h == nil {
		// reported above; keeps Config.Validate from repeating it
		h = func(context.Context, *worker.Message) error { return errors.New("no handler") }
	}
	log, err := newLogger(c)
	if err != nil {
		bad = append(bad, errors.New(err.Error()))
		log = slog.New(slog.DiscardHandler)
	}
	if eh != nil {
		eh.Logger = log
	}
	if addr := c.String("metrics-addr"); addr != "" {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			bad = append(bad, fmt.Errorf("--metrics-addr %q: want HOST:PORT, e.g. 127.0.0.1:9100 (%v)", addr, err))
		}
	}
	rdb, err := newRedisDeferred(c) // its problems join the worker's own (bad, below)
	if err != nil {
		return err
	}
	defer rdb.Close()
	cfg := worker.Config{
		Redis:             rdb,
		Handler:           h,
		Prefix:            c.String("prefix"),
		Group:             c.String("group"),
		Consumer:          c.String("consumer"),
		Topics:            c.StringSlice("topics"),
		Concurrency:       c.Int("concurrency"),
		ReadAhead:         c.Int("read-ahead"),
		VisibilityTimeout: c.Duration("visibility-timeout"),
		ReclaimInterval:   c.Duration("reclaim-interval"),
		MaxDeliveries:     c.Int("max-deliveries"),
		BackoffMin:        c.Duration("backoff-min"),
		BackoffMax:        c.Duration("backoff-max"),
		MaxTransientTime:  c.Duration("max-transient-time"),
		ShutdownTimeout:   c.Duration("shutdown-timeout"),
		DiscoveryInterval: c.Duration("discovery-interval"),
		Logger:            log,
	}
	metrics := newWorkerMetrics()
	cfg.OnHandled = metrics.onHandled
	// Zero means "default" in Config; on the command line it is a mistake.
	bad = append(bad, redisProblemErrors(c)...)
	if c.IsSet("concurrency") && cfg.Concurrency <= 0 {
		bad = append(bad, fmt.Errorf("--concurrency %d must be at least 1", cfg.Concurrency))
	}
	if c.IsSet("read-ahead") && cfg.ReadAhead <= 0 {
		bad = append(bad, fmt.Errorf("--read-ahead %d must be at least 1", cfg.ReadAhead))
	}
	if c.IsSet("max-deliveries") && cfg.MaxDeliveries <= 0 {
		bad = append(bad, fmt.Errorf("--max-deliveries %d must be at least 1", cfg.MaxDeliveries))
	}
	if c.IsSet("visibility-timeout") && cfg.VisibilityTimeout <= 0 {
		bad = append(bad, fmt.Errorf("--visibility-timeout %v must be above 0", cfg.VisibilityTimeout))
	}
	if c.IsSet("max-transient-time") && cfg.MaxTransientTime <= 0 {
		bad = append(bad, fmt.Errorf("--max-transient-time %v must be above 0", cfg.MaxTransientTime))
	}
	if err := errors.Join(append(bad, cfg.Validate())...); err != nil {
		return cli.Exit(err.Error(), 2)
	}
	// Run checks the credentials, the ACL and the wire contract version
	// before it reads anything (exit 1 at once if one is wrong; retried
	// while Redis cannot be reached), and the version again at each
	// discovery (exit 1 after a graceful stop when it changes).
	w, err := worker.New(cfg)
	if err != nil {
		return cli.Exit(err.Error(), 2)
	}
	metrics.stats = w.Stats
	return serve(c, log, metrics, w.Run, onForceExit)
}
