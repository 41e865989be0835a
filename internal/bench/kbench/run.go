package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/bench"
)

// benchmark is one of the benchmarks of issues 10 and 8.
type benchmark struct {
	id    string
	title string
	run   func(e *env) (any, error)
}

func benchmarks() []benchmark {
	return []benchmark{
		{"10a", "Ingest against its ceiling", runCeiling},
		{"10b", "End to end, no-op handlers", runEndToEnd},
		{"10c", "Backlog of a million records", runBacklog},
		{"10d", "1,000 partitions", runManyPartitions},
		{"10e", "A second ingest joining under load", runRebalance},
		{"10f", "Commit lag", runCommitLag},
		{"8-i", "Hot partition among 1,000", runHotPartition},
		{"8-ii", "Head-of-line blocking", runHeadOfLine},
		{"8-iii", "Reclaim under full load", runReclaim},
		{"8-iv", "Little's-law efficiency", runLittle},
	}
}

// meta says how and when one benchmark's figures were made.
type meta struct {
	Date    string  `json:"date"`
	Command string  `json:"command"`
	Quick   bool    `json:"quick"`
	Seconds float64 `json:"seconds"`
	Commit  string  `json:"commit"`
	Load    string  `json:"load"` // /proc/loadavg before the benchmark
	Error   string  `json:"error,omitempty"`
}

// machine describes where the figures were made.
type machine struct {
	CPUs    int    `json:"cpus"`
	CPU     string `json:"cpu"`
	Memory  string `json:"memory"`
	Kernel  string `json:"kernel"`
	Go      string `json:"go"`
	Redis   string `json:"redis"`
	Kafka   string `json:"kafka"`
	KafkaGo string `json:"kafka_go"`
	GoRedis string `json:"go_redis"`
}

// results is the file behind docs/benchmarks.md: the latest figures of
// each benchmark (a run of one benchmark replaces only its own).
type results struct {
	Machine    machine                    `json:"machine"`
	Meta       map[string]meta            `json:"meta"`
	Benchmarks map[string]json.RawMessage `json:"benchmarks"`
	GoBench    string                     `json:"gobench,omitempty"`
	GoBenchAt  string                     `json:"gobench_at,omitempty"`
}

func loadResults(path string) results {
	var r results
	if b, err := os.ReadFile(path); err == nil {
		_ = json.Unmarshal(b, &r)
	}
	if r.Meta == nil {
		r.Meta = map[string]meta{}
	}
	if r.Benchmarks == nil {
		r.Benchmarks = map[string]json.RawMessage{}
	}
	return r
}

func saveResults(path string, r results) error {
	b, err := json.MarshalIndent(r, "", " ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func cmdRun(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	brokers := fs.String("brokers", "127.0.0.1:37092", "Kafka brokers")
	redisAddr := fs.String("redis", "127.0.0.1:37379", "Redis address (a Redis of the benchmark's own)")
	redisPid := fs.Int("redis-pid", 0, "pid of that redis-server (for its CPU)")
	kbridgeBin := fs.String("kbridge", "kbridge", "the kbridge binary")
	resultsPath := fs.String("results", "docs/benchmarks.json", "results file (read, updated, written)")
	dir := fs.String("dir", "", "directory for logs (default: a new temporary one)")
	profDir := fs.String("profiles", "docs/profiles", "directory for the profiles of missed targets")
	quick := fs.Bool("quick", false, "quick mode: smaller sizes, fewer rounds")
	rounds := fs.Int("rounds", 0, "repetitions of each paired measurement (default 3, quick 2)")
	only := fs.String("only", "", "comma-separated benchmark ids to run (default all): "+ids())
	command := fs.String("command", "", "the command line to print in the report")
	kafkaVersion := fs.String("kafka-version", "", "Kafka version (for the report)")
	commit := fs.String("commit", "", "git commit measured (for the report)")
	_ = fs.Parse(args)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if *dir == "" {
		if *dir, err = os.MkdirTemp("", "kbench-"); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(*profDir, 0o755); err != nil {
		return err
	}
	e := &env{
		ctx: ctx, brokers: strings.Split(*brokers, ","), redisAddr: *redisAddr, kbridge: *kbridgeBin, self: self,
		dir: *dir, profDir: *profDir, quick: *quick, rounds: *rounds, k: bench.NewKafka(strings.Split(*brokers, ",")),
		rdb:      redis.NewClient(&redis.Options{Addr: *redisAddr, PoolSize: 32}),
		redisPid: *redisPid,
	}
	if e.rounds == 0 {
		e.rounds = pick(e, 3, 2)
	}
	defer e.rdb.Close()
	if err := e.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis %s: %w", *redisAddr, err)
	}
	want := map[string]bool{}
	for _, id := range strings.Split(*only, ",") {
		if id = strings.TrimSpace(id); id != "" {
			want[id] = true
		}
	}
	for id := range want {
		if !validID(id) {
			return fmt.Errorf("--only %s: no such benchmark (%s)", id, ids())
		}
	}
	res := loadResults(*resultsPath)
	res.Machine = describeMachine(ctx, e, *kafkaVersion)
	e.logf("logs in %s", e.dir)
	var failed []string
	for _, b := range benchmarks() {
		if len(want) > 0 && !want[b.id] {
			continue
		}
		if ctx.Err() != nil {
			break
		}
		load, _ := os.ReadFile("/proc/loadavg")
		m := meta{Date: time.Now().UTC().Format("2006-01-02 15:04 MST"), Command: *command, Quick: *quick,
			Commit: *commit, Load: strings.Join(strings.Fields(string(load))[:3], " ")}
		e.logf("==== %s: %s", b.id, b.title)
		// Profiles of an earlier run of this benchmark are stale now.
		old, _ := filepath.Glob(filepath.Join(e.profDir, b.id+"-*"))
		for _, f := range old {
			_ = os.Remove(f)
		}
		t0 := time.Now()
		out, err := b.run(e)
		e.stopAll()
		m.Seconds = time.Since(t0).Seconds()
		if err != nil {
			m.Error = err.Error()
			failed = append(failed, b.id)
			e.logf("%s FAILED after %.0fs: %v", b.id, m.Seconds, err)
		} else {
			e.logf("%s done in %.0fs", b.id, m.Seconds)
		}
		if out != nil {
			raw, jerr := json.Marshal(out)
			if jerr != nil {
				return jerr
			}
			res.Benchmarks[b.id] = raw
			res.Meta[b.id] = m
		} else if err != nil {
			res.Meta[b.id] = m
		}
		if err := saveResults(*resultsPath, res); err != nil {
			return err
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("benchmarks failed: %s (logs in %s)", strings.Join(failed, ", "), e.dir)
	}
	return ctx.Err()
}

func ids() string {
	var s []string
	for _, b := range benchmarks() {
		s = append(s, b.id)
	}
	return strings.Join(s, ",")
}

func validID(id string) bool {
	for _, b := range benchmarks() {
		if b.id == id {
			return true
		}
	}
	return false
}

func describeMachine(ctx context.Context, e *env, kafkaVersion string) machine {
	m := machine{CPUs: runtime.NumCPU(), Go: runtime.Version(), Kafka: kafkaVersion}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				m.CPU = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])
		if len(f) >= 2 {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			m.Memory = fmt.Sprintf("%.0f GiB", float64(kb)/(1<<20))
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if s, err := e.rdb.Info(ctx, "server").Result(); err == nil {
		for _, line := range strings.Split(s, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
				m.Redis = v
			}
		}
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			switch d.Path {
			case "github.com/segmentio/kafka-go":
				m.KafkaGo = d.Version
			case "github.com/redis/go-redis/v9":
				m.GoRedis = d.Version
			}
		}
	}
	return m
}

// profileDir returns the directory for one benchmark's profiles.
func (e *env) profilePath(name string) string {
	return filepath.Join(e.profDir, name)
}

var errSkipped = errors.New("skipped")
