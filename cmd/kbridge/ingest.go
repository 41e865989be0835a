package main

import (
	"errors"
	"fmt"
	"math"
	"net"
	"slices"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/kbridge/kbridge/bridge"
	"github.com/kbridge/kbridge/internal/kfetch"
)

func ingestCommand() *cli.Command {
	return &cli.Command{
		Name:  "ingest",
		Usage: "read Kafka topics into Redis streams, one per partition, committing only what the workers acknowledged",
		Description: `Joins a Kafka consumer group and appends each record of its assigned partitions
to the stream <prefix>:{<topic>:<partition>} with entry ID <offset>-1. It
commits a partition's offset once every worker group acknowledged every record
below it, trims the stream below the commit, and stops fetching a partition
whose backlog reaches --partition-cap until it drains below --low-watermark.

A topic of --topics that does not exist (yet), was deleted, or that the user
may not read is not bridged — the others are — and said so in the log, in
kbridge status and in the kbridge_ingest_topic_bridged metric; it is picked
up once it exists (the group rejoins once), and partitions added to a topic
are assigned too. Wrong credentials or missing permissions (Kafka SASL, the
group's ACL, Redis WRONGPASS/NOPERM, TLS certificates) exit 1 at once, before
joining the group; an unreachable Kafka or Redis is retried at start for
--startup-timeout, then exits 1.

Dead letters (records the workers gave up on) are copied to the Kafka topic
--dlq-topic (<topic>.dlq), and no offset is committed past a dead letter before
Kafka has it: a Redis that loses its data loses no dead letter.

On SIGTERM or SIGINT it stops fetching, commits what the workers acknowledged,
leaves the group and exits 0. Run several ingest processes with the same
--group to spread partitions; a rebalance costs no waiting and no duplicates.

Examples:
  kbridge ingest --brokers kafka:9092 --topics orders --redis-url redis://redis:6379/0
  KBRIDGE_TOPICS=orders,payments KBRIDGE_WORKER_GROUPS=billing,audit kbridge ingest
  kbridge ingest --topics orders --partition-cap 50000 --global-cap 200000 --metrics-addr 127.0.0.1:9100`,
		Flags: append(kafkaFlags(),
			&cli.StringSliceFlag{Name: "topics", EnvVars: []string{"KBRIDGE_TOPICS"}, Usage: "Kafka topics to read, comma-separated (required)"},
			&cli.StringFlag{Name: "group", Value: "kbridge", EnvVars: []string{"KBRIDGE_GROUP"}, Usage: "Kafka consumer group of the ingest processes"},
			&cli.StringSliceFlag{Name: "worker-groups", Value: cli.NewStringSlice("workers"), EnvVars: []string{"KBRIDGE_WORKER_GROUPS"},
				Usage: "Redis consumer groups the ingest creates on each stream (at 0); several = fan-out. The commit waits for every group on a stream, listed here or not: remove one with 'kbridge groups remove'"},
			&cli.Int64Flag{Name: "partition-cap", Value: 10000, EnvVars: []string{"KBRIDGE_PARTITION_CAP"},
				Usage: "un-acknowledged records per stream at which its partition stops being fetched"},
			&cli.Int64Flag{Name: "low-watermark", EnvVars: []string{"KBRIDGE_LOW_WATERMARK"}, Usage: "backlog at or below which a paused partition resumes; 0: once its stream is fully acknowledged (default: half the cap)"},
			&cli.Int64Flag{Name: "global-cap", EnvVars: []string{"KBRIDGE_GLOBAL_CAP"}, Usage: "cap on the backlog summed over all partitions of this ingest (default: none)"},
			&cli.Int64Flag{Name: "global-low-watermark", EnvVars: []string{"KBRIDGE_GLOBAL_LOW_WATERMARK"}, Usage: "summed backlog at or below which fetching resumes (default: half the global cap)"},
			&cli.DurationFlag{Name: "commit-interval", Value: bridgeDefaults.CommitInterval, EnvVars: []string{"KBRIDGE_COMMIT_INTERVAL"}, Usage: "how often offsets are committed and streams trimmed"},
			&cli.DurationFlag{Name: "metadata-interval", Value: bridgeDefaults.MetadataInterval, EnvVars: []string{"KBRIDGE_METADATA_INTERVAL"},
				Usage: "how often the topics' metadata is read: a topic created, deleted or made readable, or partitions added, is acted on within about this time"},
			&cli.StringFlag{Name: "start-offset", Value: "earliest", EnvVars: []string{"KBRIDGE_START_OFFSET"}, Usage: "where a group with no committed offset starts: earliest or latest"},
			&cli.StringFlag{Name: "isolation-level", Value: "read_committed", EnvVars: []string{"KBRIDGE_ISOLATION_LEVEL"},
				Usage: "which records reach the streams: read_committed (committed transactions and plain records; records of open transactions wait, aborted ones are skipped) or read_uncommitted (every record)"},
			&cli.StringFlag{Name: "fetch-memory", Value: "64MiB", EnvVars: []string{"KBRIDGE_FETCH_MEMORY"},
				Usage: "memory for fetched records of the whole process, in bytes or with KiB/MiB/GiB: whatever the partitions and the backlog, fetching waits rather than exceed it"},
			&cli.IntFlag{Name: "fetch-max-bytes", Value: 1 << 20, EnvVars: []string{"KBRIDGE_FETCH_MAX_BYTES"}, Usage: "bytes one partition brings in one fetch request (a request carries many partitions of one broker)"},
			&cli.StringFlag{Name: "fetch-batch-max-bytes", EnvVars: []string{"KBRIDGE_FETCH_BATCH_MAX_BYTES"},
				Usage: "most one record batch may take decompressed, in bytes or with KiB/MiB/GiB (a zip-bomb guard: a batch within it is bridged even beyond --fetch-memory, one beyond it stalls its partition) (default: --fetch-memory, at least 64MiB)"},
			&cli.DurationFlag{Name: "fetch-max-wait", Value: bridgeDefaults.FetchMaxWait, EnvVars: []string{"KBRIDGE_FETCH_MAX_WAIT"}, Usage: "how long the broker holds a fetch of partitions at their log end, waiting for new records"},
			&cli.IntFlag{Name: "append-batch", Value: 500, EnvVars: []string{"KBRIDGE_APPEND_BATCH"}, Usage: "records per append script call (calls of one fetch are pipelined), or per MULTI/EXEC transaction"},
			&cli.DurationFlag{Name: "session-timeout", Value: bridgeDefaults.SessionTimeout, EnvVars: []string{"KBRIDGE_SESSION_TIMEOUT"}, Usage: "Kafka group session timeout"},
			&cli.DurationFlag{Name: "rebalance-timeout", Value: bridgeDefaults.RebalanceTimeout, EnvVars: []string{"KBRIDGE_REBALANCE_TIMEOUT"}, Usage: "Kafka group rebalance timeout"},
			&cli.DurationFlag{Name: "heartbeat-interval", Value: bridgeDefaults.HeartbeatInterval, EnvVars: []string{"KBRIDGE_HEARTBEAT_INTERVAL"}, Usage: "Kafka group heartbeat interval"},
			&cli.DurationFlag{Name: "final-commit-timeout", Value: bridgeDefaults.FinalCommitTimeout, EnvVars: []string{"KBRIDGE_FINAL_COMMIT_TIMEOUT"},
				Usage: "bound of the last commit on a rebalance or shutdown (--rebalance-timeout must be at least --heartbeat-interval + twice this)"},
			&cli.DurationFlag{Name: "status-ttl", EnvVars: []string{"KBRIDGE_STATUS_TTL"},
				Usage: "time to live of the status hashes, refreshed every --commit-interval: how long a status outlives its ingest (default: 30s, or 3 × --commit-interval if longer)"},
			&cli.DurationFlag{Name: "startup-timeout", Value: bridgeDefaults.StartupTimeout, EnvVars: []string{"KBRIDGE_STARTUP_TIMEOUT"},
				Usage: "how long to retry an unreachable Kafka or Redis at start before exiting 1 (refused credentials or permissions exit at once)"},
			&cli.BoolFlag{Name: "allow-eviction", EnvVars: []string{"KBRIDGE_ALLOW_EVICTION"},
				Usage: "start even if Redis maxmemory-policy is not noeviction (an evicted stream loses records): warn instead of refusing"},
			metricsFlag("KBRIDGE_METRICS_ADDR"),
			// Dead letters to Kafka (bridge/dlqexport.go).
			&cli.StringFlag{Name: "dlq-topic", Value: bridgeDefaults.DLQTopic, EnvVars: []string{"KBRIDGE_DLQ_TOPIC"},
				Usage: "Kafka topic that receives each topic's dead letters ({topic} = the topic's name; created with the topic's partition count if missing)"},
			&cli.BoolFlag{Name: "dlq-export", Value: true, EnvVars: []string{"KBRIDGE_DLQ_EXPORT"},
				Usage: "export dead letters to --dlq-topic and commit no offset past one Kafka lacks; --dlq-export=false keeps them in Redis only, where a Redis that loses its data loses them for good"},
			&cli.IntFlag{Name: "dlq-max-bytes", Value: bridgeDefaults.DLQMaxBytes, EnvVars: []string{"KBRIDGE_DLQ_MAX_BYTES"},
				Usage: "largest dead letter exported in full; a larger one is exported as a stub (its coordinates and why, not the record), logged as an error, whole in Redis only"},
		),
		Action: runIngest,
	}
}

// bridgeDefaults gives the flags the library's defaults.
var bridgeDefaults = bridge.DefaultConfig()

// ingestConfig reads the ingest's flags into a Config and returns every
// problem found in them (none is reported until all are known).
func ingestConfig(c *cli.Context) (bridge.Config, []string) {
	var probs []string
	tlsCfg, mech := kafkaSecurity(c, &probs)
	probs = append(probs, redisProblems(c)...)
	cfg := bridge.Config{
		Brokers:            splitList(c.StringSlice("brokers")),
		Topics:             splitList(c.StringSlice("topics")),
		Group:              c.String("group"),
		TLS:                tlsCfg,
		SASL:               mech,
		Prefix:             c.String("prefix"),
		WorkerGroups:       splitList(c.StringSlice("worker-groups")),
		PartitionCap:       c.Int64("partition-cap"),
		LowWatermark:       c.Int64("low-watermark"),
		GlobalCap:          c.Int64("global-cap"),
		GlobalLowWatermark: c.Int64("global-low-watermark"),
		CommitInterval:     c.Duration("commit-interval"),
		MetadataInterval:   c.Duration("metadata-interval"),
		StartOffset:        c.String("start-offset"),
		FetchMaxBytes:      c.Int("fetch-max-bytes"),
		FetchMaxWait:       c.Duration("fetch-max-wait"),
		AppendBatch:        c.Int("append-batch"),
		SessionTimeout:     c.Duration("session-timeout"),
		RebalanceTimeout:   c.Duration("rebalance-timeout"),
		HeartbeatInterval:  c.Duration("heartbeat-interval"),
		FinalCommitTimeout: c.Duration("final-commit-timeout"),
		StatusTTL:          c.Duration("status-ttl"),
		StartupTimeout:     c.Duration("startup-timeout"),
		AllowEviction:      c.Bool("allow-eviction"),
		DLQTopic:           c.String("dlq-topic"),
		DisableDLQExport:   !c.Bool("dlq-export"),
		DLQMaxBytes:        c.Int("dlq-max-bytes"),
	}
	if c.Int64("partition-cap") == 0 {
		probs = append(probs, "--partition-cap 0 must be at least 1")
	}
	if iso, err := kfetch.ParseIsolationLevel(c.String("isolation-level")); err != nil {
		probs = append(probs, fmt.Sprintf("--isolation-level %q must be read_committed or read_uncommitted", c.String("isolation-level")))
	} else {
		cfg.Isolation = iso
	}
	switch n, err := parseSize(c.String("fetch-memory")); {
	case err != nil:
		probs = append(probs, fmt.Sprintf("--fetch-memory %q: %v", c.String("fetch-memory"), err))
	case n == 0: // 0 would mean the default to Validate
		probs = append(probs, "--fetch-memory 0 must be at least 1 MiB (1048576)")
	default:
		cfg.FetchMemory = n
	}
	if v := c.String("fetch-batch-max-bytes"); v != "" {
		switch n, err := parseSize(v); {
		case err != nil:
			probs = append(probs, fmt.Sprintf("--fetch-batch-max-bytes %q: %v", v, err))
		case n == 0: // 0 would mean the default to Validate
			probs = append(probs, "--fetch-batch-max-bytes 0 must be at least 1 MiB (1048576)")
		default:
			cfg.FetchBatchMaxBytes = n
		}
	}
	// A low watermark of 0 is a value, not "the default" (Config's zero).
	for _, f := range []struct {
		name string
		v    *int64
	}{{"low-watermark", &cfg.LowWatermark}, {"global-low-watermark", &cfg.GlobalLowWatermark}} {
		switch {
		case *f.v < 0:
			probs = append(probs, fmt.Sprintf("--%s %d must be at least 0", f.name, *f.v))
			*f.v = 0
		case c.IsSet(f.name) && *f.v == 0:
			*f.v = bridge.ResumeWhenEmpty
		}
	}
	for _, name := range []string{"status-ttl", "final-commit-timeout"} {
		if c.IsSet(name) && c.Duration(name) <= 0 {
			probs = append(probs, fmt.Sprintf("--%s %v must be above 0", name, c.Duration(name)))
		}
	}
	if c.IsSet("startup-timeout") && c.Duration("startup-timeout") == 0 {
		probs = append(probs, fmt.Sprintf("--startup-timeout %v must be above 0", c.Duration("startup-timeout")))
	}
	if addr := c.String("metrics-addr"); addr != "" {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			probs = append(probs, fmt.Sprintf("--metrics-addr %q: want HOST:PORT, e.g. 127.0.0.1:9100 (%v)", addr, err))
		}
	}
	// Validate needs a client; a placeholder keeps it from reporting one
	// missing. A flag that did not parse is left at its default for it.
	err := cfg.WithRedisPlaceholder().Validate()
	var ce *bridge.ConfigError
	if errors.As(err, &ce) {
		for _, p := range ce.Problems {
			if !slices.Contains(probs, p) {
				probs = append(probs, p)
			}
		}
	}
	return cfg, probs
}

func runIngest(c *cli.Context) error {
	if c.NArg() > 0 {
		return cli.Exit(fmt.Sprintf("ingest takes no arguments, got %q (topics go in --topics)", c.Args().Slice()), 2)
	}
	// Every problem of the flags — the ingest's, Redis's (ingestConfig),
	// the logger's — in one message, exit 2.
	cfg, probs := ingestConfig(c)
	log, err := newLogger(c)
	if err != nil {
		probs = append(probs, err.Error())
	}
	if len(probs) > 0 {
		return cli.Exit("invalid ingest configuration:\n  - "+strings.Join(probs, "\n  - "), 2)
	}
	rdb, err := newRedis(c)
	if err != nil {
		return err
	}
	defer rdb.Close()
	cfg.Redis = rdb
	cfg.Logger = log
	in, err := bridge.New(cfg)
	if err != nil {
		return cli.Exit(err.Error(), 2)
	}
	log.Info("redis", "url", redactURL(c.String("redis-url")), "prefix", cfg.Prefix)
	return serve(c, log, collectorList{newIngestCollector(in.Stats), newDLQCollector(in.DLQStats)}, in.Run, nil)
}

// parseSize reads a byte count: digits, optionally followed by B, KiB, MiB
// or GiB (K, M, G, KB, MB, GB are read as the same powers of two).
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, errors.New("want a number of bytes, e.g. 67108864 or 64MiB")
	}
	n, err := strconv.ParseInt(t[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("want a number of bytes: %w", err)
	}
	var shift uint
	switch strings.ToLower(strings.TrimSpace(t[i:])) {
	case "", "b":
	case "k", "kb", "kib":
		shift = 10
	case "m", "mb", "mib":
		shift = 20
	case "g", "gb", "gib":
		shift = 30
	default:
		return 0, fmt.Errorf("unknown unit %q: want B, KiB, MiB or GiB", t[i:])
	}
	if n > math.MaxInt64>>shift {
		return 0, errors.New("too large")
	}
	return n << shift, nil
}
