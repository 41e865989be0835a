package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/worker"
)

// action is what the synthetic handler does with a record.
type action struct {
	sleep time.Duration
	fail  bool
}

// handlerSpec maps "topic/partition" (or "*/partition", "topic/*", or
// "default") to an action: "default=sleep:1ms,hol/0=sleep:500ms,fail/0=fail".
type handlerSpec map[string]action

func parseSpec(s string) (handlerSpec, error) {
	spec := handlerSpec{"default": {}}
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return nil, fmt.Errorf("handler spec %q: want key=action", part)
		}
		var a action
		switch {
		case v == "noop":
		case v == "fail":
			a.fail = true
		case strings.HasPrefix(v, "sleep:"):
			d, err := time.ParseDuration(strings.TrimPrefix(v, "sleep:"))
			if err != nil {
				return nil, fmt.Errorf("handler spec %q: %w", part, err)
			}
			a.sleep = d
		default:
			return nil, fmt.Errorf("handler spec %q: action is noop, fail or sleep:DURATION", part)
		}
		spec[k] = a
	}
	return spec, nil
}

func (s handlerSpec) lookup(topic string, partition int) action {
	p := strconv.Itoa(partition)
	for _, k := range []string{topic + "/" + p, "*/" + p, topic + "/*"} {
		if a, ok := s[k]; ok {
			return a
		}
	}
	return s["default"]
}

var errDownstream = errors.New("downstream unavailable (synthetic)")

// cmdWorker runs one worker process on the worker library (what kbridge
// worker runs, minus the exec/HTTP handler) with a synthetic handler, and
// serves its counts on GET /stats.
func cmdWorker(args []string) error {
	fs := flag.NewFlagSet("worker", flag.ExitOnError)
	addr := fs.String("redis", "127.0.0.1:6379", "Redis address")
	prefix := fs.String("prefix", "kbridge", "key prefix")
	group := fs.String("group", worker.DefaultGroup, "worker group")
	consumer := fs.String("consumer", "", "consumer name (default: the library's)")
	concurrency := fs.Int("concurrency", worker.DefaultConcurrency, "handlers at once")
	vis := fs.Duration("visibility-timeout", 0, "visibility timeout (0: default)")
	reclaim := fs.Duration("reclaim-interval", 0, "reclaim interval (0: default)")
	spec := fs.String("handle", "default=noop", "handler spec: default=sleep:1ms,topic/0=fail,...")
	statsAddr := fs.String("stats-addr", "127.0.0.1:0", "address of GET /stats")
	portFile := fs.String("port-file", "", "write the stats port here")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the whole run here")
	_ = fs.Parse(args)
	hs, err := parseSpec(*spec)
	if err != nil {
		return err
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	c := newCounter()
	// Where a sleeping handler's time goes (8-iv): the time its sleeps
	// really took, and the slots busy, sampled every millisecond.
	var sleptNS, sleeps, busySum, busySamples atomic.Int64
	rdb := redis.NewClient(&redis.Options{Addr: *addr, PoolSize: max(10, *concurrency/4), ContextTimeoutEnabled: true})
	defer rdb.Close()
	w, err := worker.New(worker.Config{
		Redis: rdb, Prefix: *prefix, Group: *group, Consumer: *consumer, Concurrency: *concurrency,
		VisibilityTimeout: *vis, ReclaimInterval: *reclaim, ShutdownTimeout: 5 * time.Second,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Handler: func(ctx context.Context, m *worker.Message) error {
			a := hs.lookup(m.Topic, m.Partition)
			if a.sleep > 0 {
				t0 := time.Now()
				t := time.NewTimer(a.sleep)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
					return ctx.Err()
				}
				sleptNS.Add(int64(time.Since(t0)))
				sleeps.Add(1)
			}
			if a.fail {
				return errDownstream
			}
			c.add(m.Topic, m.Partition, m.Offset)
			return nil
		},
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *statsAddr)
	if err != nil {
		return err
	}
	if *portFile != "" {
		if err := os.WriteFile(*portFile, []byte(strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)), 0o644); err != nil {
			return err
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/stats", func(rw http.ResponseWriter, r *http.Request) {
		snap := c.snapshot()
		st := w.Stats()
		snap.Worker = map[string]int64{"processed": st.Processed, "failed": st.Failed, "acked": st.Acked,
			"reclaimed": st.Reclaimed, "lease_lost": st.LeaseLost, "in_flight": st.InFlight, "held": st.Held,
			"streams": st.Streams, "dead_lettered": st.DeadLettered, "retries": st.Retries,
			"slept_ns": sleptNS.Load(), "sleeps": sleeps.Load(), "busy_sum": busySum.Load(), "busy_samples": busySamples.Load()}
		_ = json.NewEncoder(rw).Encode(snap)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				busySum.Add(w.Stats().InFlight)
				busySamples.Add(1)
			}
		}
	}()
	if err := w.Run(ctx); err != nil && !errors.Is(err, worker.ErrShutdownTimeout) {
		return err
	}
	return nil
}
