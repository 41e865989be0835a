package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kbridge/kbridge/internal/testenv"
)

// TestMetricsMove starts "kbridge ingest" and "kbridge worker --http" with
// --metrics-addr, produces records in two rounds, and scrapes both /metrics
// endpoints during the run: the counters start at zero and follow each
// round, the per-partition gauges reach the log end, the handler latency
// histogram counts every record.
func TestMetricsMove(t *testing.T) {
	t.Log(testenv.String())
	bin := testenv.BuildKbridge(t)
	const parts = 2
	brokers := testenv.Kafka(t)
	r := testenv.NewRedis(t)
	topic, prefix, group := testenv.Name(t), testenv.Name(t), testenv.Name(t)
	testenv.CreateTopic(t, brokers, topic, parts)

	var handled atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { handled.Add(1) }))
	defer srv.Close()

	ingestAddr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	workerAddr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	common := []string{"--redis-url", "redis://" + r.Addr + "/0", "--prefix", prefix}
	ingest := start(t, bin, append(common, "ingest", "--brokers", strings.Join(brokers, ","), "--topics", topic, "--group", group,
		"--commit-interval", "100ms", "--allow-eviction", "--metrics-addr", ingestAddr)...)
	wrk := start(t, bin, append(common, "worker", "--http", srv.URL, "--discovery-interval", "100ms", "--metrics-addr", workerAddr)...)

	ingestURL, workerURL := "http://"+ingestAddr+"/metrics", "http://"+workerAddr+"/metrics"
	var im, wm map[string]float64
	testenv.Eventually(t, 30*time.Second, func() bool {
		var err1, err2 error
		im, err1 = scrape(ingestURL)
		wm, err2 = scrape(workerURL)
		return err1 == nil && err2 == nil && im["kbridge_ingest_assigned_partitions"] == parts
	}, "metrics endpoints not up, or partitions not assigned: %v", im)
	for _, name := range []string{"kbridge_ingest_records_fetched_total", "kbridge_ingest_records_appended_total"} {
		if v, ok := im[name]; !ok || v != 0 {
			t.Errorf("before producing: %s = %v (present %v), want 0", name, v, ok)
		}
	}
	if v, ok := wm["kbridge_worker_processed_total"]; !ok || v != 0 {
		t.Errorf("before producing: kbridge_worker_processed_total = %v (present %v), want 0", v, ok)
	}
	if _, ok := im[`kbridge_build_info{version="dev"}`]; !ok {
		t.Errorf("no kbridge_build_info")
	}

	total := 0
	for round, n := range []int{200, 100} {
		testenv.Produce(t, brokers, topic, total, n)
		total += n
		testenv.Eventually(t, 60*time.Second, func() bool {
			im, _ = scrape(ingestURL)
			wm, _ = scrape(workerURL)
			return im["kbridge_ingest_records_appended_total"] == float64(total) &&
				sum(im, "kbridge_ingest_committed_offset") == float64(total) &&
				sum(im, "kbridge_ingest_kafka_lag") == 0 &&
				wm["kbridge_worker_processed_total"] == float64(total) &&
				sum(wm, "kbridge_worker_handler_duration_seconds_count") == float64(total)
		}, "round %d: metrics did not reach %d records:\ningest %v\nworker %v", round, total, im, wm)
		t.Logf("round %d: fetched %v appended %v commits %v committed %v log end %v; worker processed %v acked %v, latency count %v",
			round, im["kbridge_ingest_records_fetched_total"], im["kbridge_ingest_records_appended_total"], im["kbridge_ingest_commits_total"],
			sum(im, "kbridge_ingest_committed_offset"), sum(im, "kbridge_ingest_log_end_offset"),
			wm["kbridge_worker_processed_total"], wm["kbridge_worker_acked_total"], sum(wm, "kbridge_worker_handler_duration_seconds_count"))
	}
	for _, name := range []string{
		"kbridge_ingest_records_fetched_total", "kbridge_ingest_commits_total", "kbridge_ingest_rebalances_total",
		`kbridge_ingest_stream_top_offset{partition="0",topic="` + topic + `"}`,
		`kbridge_ingest_partition_paused{partition="1",topic="` + topic + `"}`,
		`kbridge_ingest_stream_backlog{partition="1",topic="` + topic + `"}`,
		"kbridge_ingest_paused_partitions", "kbridge_ingest_backlog", "kbridge_ingest_duplicates_rejected_total",
	} {
		if _, ok := im[name]; !ok {
			t.Errorf("ingest metrics lack %s", name)
		}
	}
	if im["kbridge_ingest_commits_total"] < 1 || im["kbridge_ingest_rebalances_total"] < 1 {
		t.Errorf("commits %v, rebalances %v: want at least 1 each", im["kbridge_ingest_commits_total"], im["kbridge_ingest_rebalances_total"])
	}
	for _, name := range []string{
		"kbridge_worker_in_flight", "kbridge_worker_queued_entries", "kbridge_worker_parked_entries",
		"kbridge_worker_retry_waiting_entries", "kbridge_worker_held_entries", "kbridge_worker_streams",
	} {
		if _, ok := wm[name]; !ok {
			t.Errorf("worker metrics lack %s", name)
		}
	}
	if v := wm["kbridge_worker_parked_entries"]; v != 0 {
		t.Errorf("worker: %v parked entries with no dead worker to reclaim from; want 0", v)
	}
	if wm[`kbridge_worker_handler_duration_seconds_count{result="ok"}`] != float64(total) || wm["kbridge_worker_acked_total"] != float64(total) {
		t.Errorf("worker: ok latency count %v, acked %v; want %d", wm[`kbridge_worker_handler_duration_seconds_count{result="ok"}`], wm["kbridge_worker_acked_total"], total)
	}
	stop(t, wrk)
	stop(t, ingest)
}

type proc struct {
	cmd *exec.Cmd
	out *bytes.Buffer
}

func start(t *testing.T, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(bin, args...), out: &bytes.Buffer{}}
	p.cmd.Env = cleanEnv()
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			_ = p.cmd.Wait()
		}
		if t.Failed() {
			t.Logf("kbridge %v:\n%s", args, p.out.String())
		}
	})
	return p
}

// stop sends SIGTERM and expects a clean exit within 20s.
func stop(t *testing.T, p *proc) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("%v: %v", p.cmd.Args[1:], err)
		}
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
		t.Errorf("%v did not exit within 20s of SIGTERM", p.cmd.Args[1:])
	}
}
