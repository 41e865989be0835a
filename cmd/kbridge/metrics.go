package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/urfave/cli/v2"

	"github.com/kbridge/kbridge/bridge"
	"github.com/kbridge/kbridge/worker"
)

// metricsFlag is --metrics-addr of the ingest and the worker. Off by default:
// an operator opts in, and the examples bind to loopback.
func metricsFlag(envVar string) cli.Flag {
	return &cli.StringFlag{Name: "metrics-addr", EnvVars: []string{envVar},
		Usage: "serve Prometheus metrics on http://`HOST:PORT`/metrics, e.g. 127.0.0.1:9100 (default: off)"}
}

// metricsListener checks --metrics-addr and binds it, so that a bad or busy
// address is reported (exit 2) before anything starts. nil when off.
func metricsListener(c *cli.Context) (net.Listener, error) {
	addr := c.String("metrics-addr")
	if addr == "" {
		return nil, nil
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, cli.Exit(fmt.Sprintf("--metrics-addr %q: want HOST:PORT, e.g. 127.0.0.1:9100 (%v)", addr, err), 2)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, cli.Exit(fmt.Sprintf("--metrics-addr %s: %v", addr, err), 2)
	}
	return l, nil
}

// newRegistry returns a registry with the Go runtime and process collectors
// and kbridge_build_info.
// serve runs run until the first SIGINT or SIGTERM cancels its context,
// with col served on --metrics-addr meanwhile. A run error exits 1. A second
// signal calls onForceExit (may be nil) and exits (see signalContext).
func serve(c *cli.Context, log *slog.Logger, col prometheus.Collector, run func(context.Context) error, onForceExit func()) error {
	ml, err := metricsListener(c)
	if err != nil {
		return err
	}
	ctx, stop := signalContext(log, onForceExit)
	defer stop()
	reg := newRegistry()
	reg.MustRegister(col)
	serveMetrics(ctx, ml, reg, log)
	if err := run(ctx); err != nil {
		return cli.Exit(err.Error(), 1)
	}
	return nil
}

func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kbridge_build_info", Help: "Always 1; the version label is the kbridge version.",
			ConstLabels: prometheus.Labels{"version": version},
		}, func() float64 { return 1 }),
	)
	return reg
}

// serveMetrics serves reg on l until ctx is done. l may be nil (metrics off).
func serveMetrics(ctx context.Context, l net.Listener, reg *prometheus.Registry, log *slog.Logger) {
	if l == nil {
		return
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintln(w, "kbridge: metrics at /metrics")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "addr", l.Addr().String(), "err", err)
		}
	}()
	log.Info("serving metrics", "url", "http://"+l.Addr().String()+"/metrics")
}

// ingestCollector exposes bridge.Ingest.Stats as kbridge_ingest_* metrics,
// read at each scrape: nothing is kept between scrapes but the Ingest's own
// counters.
type ingestCollector struct {
	stats func() bridge.Stats

	counters []counterDesc[bridge.Counters]
	gauges   []gaugeDesc
	assigned *prometheus.Desc
	paused   *prometheus.Desc
	backlog  *prometheus.Desc
	topic    *prometheus.Desc
	stall    *prometheus.Desc
}

type counterDesc[S any] struct {
	desc *prometheus.Desc
	get  func(S) int64
}

type gaugeDesc struct {
	desc *prometheus.Desc
	get  func(bridge.PartitionStatus) (float64, bool)
}

func newIngestCollector(stats func() bridge.Stats) *ingestCollector {
	cnt := func(name, help string, get func(bridge.Counters) int64) counterDesc[bridge.Counters] {
		return counterDesc[bridge.Counters]{prometheus.NewDesc("kbridge_ingest_"+name, help, nil, nil), get}
	}
	tp := []string{"topic", "partition"}
	g := func(name, help string, get func(bridge.PartitionStatus) (float64, bool)) gaugeDesc {
		return gaugeDesc{prometheus.NewDesc("kbridge_ingest_"+name, help, tp, nil), get}
	}
	known := func(v int64) (float64, bool) { return float64(v), v >= 0 }
	return &ingestCollector{
		stats: stats,
		counters: []counterDesc[bridge.Counters]{
			cnt("records_fetched_total", "Records fetched from Kafka.", func(c bridge.Counters) int64 { return c.Fetched }),
			cnt("records_appended_total", "Records appended to Redis streams.", func(c bridge.Counters) int64 { return c.Appended }),
			cnt("duplicates_rejected_total", "Fetched records already in their stream (a retry, a restart, another ingest), not appended again.", func(c bridge.Counters) int64 { return c.DuplicatesSkipped }),
			cnt("commits_total", "Successful Kafka offset commits.", func(c bridge.Counters) int64 { return c.Commits }),
			cnt("commit_errors_total", "Failed Kafka offset commits (retried).", func(c bridge.Counters) int64 { return c.CommitErrors }),
			cnt("redis_errors_total", "Failed Redis calls (retried with backoff).", func(c bridge.Counters) int64 { return c.RedisErrors }),
			cnt("kafka_errors_total", "Failed Kafka fetches (retried with backoff).", func(c bridge.Counters) int64 { return c.KafkaErrors }),
			cnt("redis_losses_total", "Times Redis was found to have lost appended entries (the records are fetched again).", func(c bridge.Counters) int64 { return c.Losses }),
			cnt("trimmed_total", "Stream entries trimmed below the committed offset.", func(c bridge.Counters) int64 { return c.Trimmed }),
			cnt("rebalances_total", "Kafka consumer group generations joined.", func(c bridge.Counters) int64 { return c.Rebalances }),
			cnt("pauses_total", "Times a partition was paused because its stream (or all streams) reached the cap.", func(c bridge.Counters) int64 { return c.Pauses }),
		},
		gauges: []gaugeDesc{
			g("committed_offset", "Last offset committed to Kafka (absent before the first commit).", func(s bridge.PartitionStatus) (float64, bool) { return known(s.Committed) }),
			g("log_end_offset", "The partition's log end offset (high watermark) at the last fetch.", func(s bridge.PartitionStatus) (float64, bool) { return known(s.LogEnd) }),
			g("kafka_lag", "Log end minus committed offset: records not yet processed, in Kafka or in Redis.", func(s bridge.PartitionStatus) (float64, bool) {
				return float64(s.Lag()), s.Committed >= 0 && s.LogEnd >= 0
			}),
			g("stream_top_offset", "Offset of the last entry appended to the stream.", func(s bridge.PartitionStatus) (float64, bool) { return known(s.Top) }),
			g("stream_length", "XLEN of the partition's stream.", func(s bridge.PartitionStatus) (float64, bool) { return float64(s.Length), true }),
			g("stream_backlog", "Records in the stream not yet acknowledged by every worker group (what the cap applies to).", func(s bridge.PartitionStatus) (float64, bool) { return float64(s.Backlog), true }),
			g("pending_entries", "Entries delivered to workers and not yet acknowledged, summed over the groups.", func(s bridge.PartitionStatus) (float64, bool) { return float64(s.Pending), true }),
			g("partition_paused", "1 while the partition is not fetched because of backpressure.", func(s bridge.PartitionStatus) (float64, bool) { return b2f(s.Paused), true }),
			g("partition_stalled", "1 while the partition is stalled: not fetched, not committed (kbridge_ingest_partition_stalled_cause says why).", func(s bridge.PartitionStatus) (float64, bool) { return b2f(s.Stalled != ""), true }),
			g("oldest_pending_age_seconds", "Idle time of the lowest pending entry: how long the entry that holds the commit has been with its worker.", func(s bridge.PartitionStatus) (float64, bool) {
				return s.OldestPendingIdle.Seconds(), s.OldestPending >= 0
			}),
			g("oldest_pending_deliveries", "Delivery count of the lowest pending entry (a poison record shows rising deliveries).", func(s bridge.PartitionStatus) (float64, bool) {
				return float64(s.OldestPendingDelivery), s.OldestPending >= 0
			}),
		},
		assigned: prometheus.NewDesc("kbridge_ingest_assigned_partitions", "Partitions assigned to this ingest.", nil, nil),
		paused:   prometheus.NewDesc("kbridge_ingest_paused_partitions", "Assigned partitions paused by backpressure.", nil, nil),
		backlog:  prometheus.NewDesc("kbridge_ingest_backlog", "Stream backlog summed over the assigned partitions (what the global cap applies to).", nil, nil),
		topic: prometheus.NewDesc("kbridge_ingest_topic_bridged",
			"Per configured topic: 1 while it is bridged, 0 while it is not; state says why: missing (not created, or deleted), not_authorized (the user may not describe or read it), error.",
			[]string{"topic", "state"}, nil),
		stall: prometheus.NewDesc("kbridge_ingest_partition_stalled_cause",
			"1 while the partition is stalled (not fetched, not committed), by cause: topic_recreated (the topic's ID is not the one of the stream's records), beyond_log_end (the stream or commit is beyond the log end), stray_entry (an entry kbridge did not write), batch_too_large (a record batch decompresses beyond --fetch-batch-max-bytes). See docs/operations.md.",
			[]string{"topic", "partition", "cause"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *ingestCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.counters {
		ch <- d.desc
	}
	for _, d := range c.gauges {
		ch <- d.desc
	}
	ch <- c.assigned
	ch <- c.paused
	ch <- c.backlog
	ch <- c.topic
	ch <- c.stall
}

// Collect implements prometheus.Collector.
func (c *ingestCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.stats()
	for _, d := range c.counters {
		ch <- prometheus.MustNewConstMetric(d.desc, prometheus.CounterValue, float64(d.get(st.Counters)))
	}
	paused := 0
	for _, p := range st.Partitions {
		if p.Paused {
			paused++
		}
		part := strconv.Itoa(p.Partition)
		if p.StallCause != "" {
			ch <- prometheus.MustNewConstMetric(c.stall, prometheus.GaugeValue, 1, p.Topic, part, p.StallCause)
		}
		for _, d := range c.gauges {
			if v, ok := d.get(p); ok {
				ch <- prometheus.MustNewConstMetric(d.desc, prometheus.GaugeValue, v, p.Topic, part)
			}
		}
	}
	ch <- prometheus.MustNewConstMetric(c.assigned, prometheus.GaugeValue, float64(len(st.Partitions)))
	ch <- prometheus.MustNewConstMetric(c.paused, prometheus.GaugeValue, float64(paused))
	ch <- prometheus.MustNewConstMetric(c.backlog, prometheus.GaugeValue, float64(st.Backlog))
	for _, t := range st.Topics {
		ch <- prometheus.MustNewConstMetric(c.topic, prometheus.GaugeValue, b2f(t.State == bridge.TopicBridged),
			t.Topic, strings.ReplaceAll(t.State, " ", "_"))
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// workerMetrics exposes worker.Worker.Stats as kbridge_worker_* metrics, and
// the handler latency histogram fed by worker.Config.OnHandled.
type workerMetrics struct {
	stats    func() worker.Stats
	counters []counterDesc[worker.Stats]
	gauges   []counterDesc[worker.Stats]
	latency  *prometheus.HistogramVec
}

func newWorkerMetrics() *workerMetrics {
	cnt := func(name, help string, get func(worker.Stats) int64) counterDesc[worker.Stats] {
		return counterDesc[worker.Stats]{prometheus.NewDesc("kbridge_worker_"+name, help, nil, nil), get}
	}
	return &workerMetrics{
		counters: []counterDesc[worker.Stats]{
			cnt("processed_total", "Handler calls that succeeded.", func(s worker.Stats) int64 { return s.Processed }),
			cnt("failed_total", "Handler calls that failed (errors, panics, non-zero exits, HTTP errors).", func(s worker.Stats) int64 { return s.Failed }),
			cnt("retries_total", "Retries after a failure (each counts a delivery).", func(s worker.Stats) int64 { return s.Retries }),
			cnt("backoffs_total", "Back-offs on an unavailable downstream (HTTP 429/502/503/504, connection refused, RetryAfter); no delivery counted.", func(s worker.Stats) int64 { return s.Backoffs }),
			cnt("dead_letters_total", "Entries written to a dead-letter stream.", func(s worker.Stats) int64 { return s.DeadLettered }),
			cnt("reclaimed_total", "Entries claimed from other consumers after the visibility timeout (dead or stuck workers).", func(s worker.Stats) int64 { return s.Reclaimed }),
			cnt("acked_total", "Entries acknowledged (XACK).", func(s worker.Stats) int64 { return s.Acked }),
			cnt("lease_lost_total", "Held entries another consumer reclaimed (this worker's lease lapsed).", func(s worker.Stats) int64 { return s.LeaseLost }),
			cnt("vanished_total", "Held entries no longer pending anywhere that no other consumer took: Redis forgot them (a restart from an older snapshot, or empty) or they were deleted.", func(s worker.Stats) int64 { return s.Vanished }),
		},
		gauges: []counterDesc[worker.Stats]{
			cnt("in_flight", "Handlers running now.", func(s worker.Stats) int64 { return s.InFlight }),
			cnt("queued_entries", "Entries read ahead or reclaimed, waiting for a handler slot.", func(s worker.Stats) int64 { return s.Queued }),
			cnt("parked_entries", "Of queued_entries, reclaimed entries beyond what their stream starts at once: started as its queue drains, outside the read-ahead bound (at most what dead workers held).", func(s worker.Stats) int64 { return s.Parked }),
			cnt("retry_waiting_entries", "Entries waiting for a retry after a failure or a back-off (their handler slot given back).", func(s worker.Stats) int64 { return s.Waiting }),
			cnt("held_entries", "Entries this worker holds now: running, queued, waiting for a retry or for their acknowledgement (its pending entries).", func(s worker.Stats) int64 { return s.Held }),
			cnt("streams", "Streams read, at the last discovery.", func(s worker.Stats) int64 { return s.Streams }),
		},
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kbridge_worker_handler_duration_seconds",
			Help:    "Time a handler call took, by result (ok or error).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"result"}),
	}
}

// onHandled is the worker.Config.OnHandled hook.
func (m *workerMetrics) onHandled(_ *worker.Message, took time.Duration, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.latency.WithLabelValues(result).Observe(took.Seconds())
}

// Describe implements prometheus.Collector.
func (m *workerMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range m.counters {
		ch <- d.desc
	}
	for _, d := range m.gauges {
		ch <- d.desc
	}
	m.latency.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *workerMetrics) Collect(ch chan<- prometheus.Metric) {
	if m.stats == nil {
		return
	}
	st := m.stats()
	for _, d := range m.counters {
		ch <- prometheus.MustNewConstMetric(d.desc, prometheus.CounterValue, float64(d.get(st)))
	}
	for _, d := range m.gauges {
		ch <- prometheus.MustNewConstMetric(d.desc, prometheus.GaugeValue, float64(d.get(st)))
	}
	m.latency.Collect(ch)
}
