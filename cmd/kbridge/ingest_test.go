package main

import (
	"bytes"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"github.com/urfave/cli/v2"

	"github.com/kbridge/kbridge/bridge"
)

// TestIngestReportsEveryProblem (issue 7 point 8): one invalid run of kbridge
// ingest lists every reason — its own flags, the log flags and the Redis
// flags — in one message, exit 2, before connecting to anything. On main the
// Redis problems came only after the ingest's were fixed.
func TestIngestReportsEveryProblem(t *testing.T) {
	_, errs, code := runCLI(t, "--redis-url", "redis://127.0.0.1:1/0", "--redis-tls-ca", "/nonexistent/ca.pem",
		"--log-level", "loud", "ingest", "--topics", "a b", "--partition-cap", "-5", "--startup-timeout", "-1s",
		"--metrics-addr", "9100")
	want := []string{`topic "a b"`, "--partition-cap -5", "--startup-timeout -1s", "--log-level \"loud\"",
		"--redis-tls-ca needs a rediss:// URL", "--metrics-addr \"9100\""}
	var missing []string
	for _, w := range want {
		if !strings.Contains(errs, w) {
			missing = append(missing, w)
		}
	}
	if code != 2 || len(missing) > 0 {
		t.Fatalf("exit %d, stderr:\n%s\nwant exit 2 and every reason; missing %q", code, errs, missing)
	}
	t.Logf("exit 2 with %d reasons in one message", strings.Count(errs, "\n  - "))
}

// TestMetricsTopicBridged (issue 7 point 1): each configured topic has a
// kbridge_ingest_topic_bridged gauge, 0 with the reason while it is not
// bridged (an alert can fire on it).
func TestMetricsTopicBridged(t *testing.T) {
	col := newIngestCollector(func() bridge.Stats {
		return bridge.Stats{Topics: []bridge.TopicStatus{
			{Topic: "orders", State: bridge.TopicBridged, Partitions: 3},
			{Topic: "later", State: bridge.TopicMissing},
			{Topic: "secret", State: bridge.TopicNotAuthorized},
		}}
	})
	reg := prometheus.NewRegistry()
	reg.MustRegister(col)
	var buf bytes.Buffer
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&buf, mf); err != nil {
			t.Fatal(err)
		}
	}
	got, err := parseMetrics(&buf)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{
		`kbridge_ingest_topic_bridged{state="bridged",topic="orders"}`:        1,
		`kbridge_ingest_topic_bridged{state="missing",topic="later"}`:         0,
		`kbridge_ingest_topic_bridged{state="not_authorized",topic="secret"}`: 0,
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
}

// parseIngest runs ingestConfig on the flags of kbridge ingest.
func parseIngest(t *testing.T, args ...string) (bridge.Config, []string) {
	t.Helper()
	var cfg bridge.Config
	var probs []string
	cmd := ingestCommand()
	cmd.Action = func(c *cli.Context) error {
		cfg, probs = ingestConfig(c)
		return nil
	}
	app := &cli.App{Name: "kbridge", Commands: []*cli.Command{cmd}, Flags: commonFlags()}
	if err := app.Run(append([]string{"kbridge", "ingest", "--topics", "orders"}, args...)); err != nil {
		t.Fatalf("kbridge ingest %v: %v", args, err)
	}
	return cfg, probs
}

// TestIngestFlags (issue 7 point 9): the status TTL and the final commit
// timeout have flags, a long --commit-interval needs no other flag (on main
// --commit-interval 45s exited 2 about a "status TTL 30s" no flag sets), a
// low watermark of 0 can be set (on main 0 meant "half the cap"), and every
// message names a flag the user can set.
func TestIngestFlags(t *testing.T) {
	for _, tt := range []struct {
		name  string
		args  []string
		check func(bridge.Config) bool
		probs []string
	}{
		{"long commit interval", []string{"--commit-interval", "45s"},
			func(c bridge.Config) bool { return c.CommitInterval == 45*time.Second }, nil},
		{"low watermark 0", []string{"--partition-cap", "10", "--low-watermark", "0", "--global-cap", "100", "--global-low-watermark", "0"},
			func(c bridge.Config) bool {
				return c.LowWatermark == bridge.ResumeWhenEmpty && c.GlobalLowWatermark == bridge.ResumeWhenEmpty
			}, nil},
		{"low watermark unset", []string{"--partition-cap", "10"},
			func(c bridge.Config) bool { return c.LowWatermark == 0 }, nil},
		{"status TTL and final commit timeout", []string{"--status-ttl", "2m", "--final-commit-timeout", "3s"},
			func(c bridge.Config) bool {
				return c.StatusTTL == 2*time.Minute && c.FinalCommitTimeout == 3*time.Second
			}, nil},
		{"batch max bytes", []string{"--fetch-memory", "1MiB", "--fetch-batch-max-bytes", "256MiB"},
			func(c bridge.Config) bool { return c.FetchBatchMaxBytes == 256<<20 && c.FetchMemory == 1<<20 }, nil},
		{"batch max bytes unset", nil, func(c bridge.Config) bool { return c.FetchBatchMaxBytes == 0 }, nil},
		{"bad values name their flags", []string{"--commit-interval", "10s", "--status-ttl", "5s", "--final-commit-timeout", "20s",
			"--low-watermark", "-3", "--fetch-batch-max-bytes", "1KiB"}, nil,
			[]string{"--status-ttl 5s must be at least --commit-interval 10s", "--final-commit-timeout 20s",
				"--low-watermark -3 must be at least 0", "--fetch-batch-max-bytes 1024 must be between 1 MiB"}},
		{"bad batch max bytes", []string{"--fetch-batch-max-bytes", "3GiB"}, nil, []string{"--fetch-batch-max-bytes 3221225472"}},
		{"batch max bytes unit", []string{"--fetch-batch-max-bytes", "64XB"}, nil, []string{"--fetch-batch-max-bytes \"64XB\""}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, probs := parseIngest(t, tt.args...)
			if tt.probs == nil {
				if len(probs) > 0 || !tt.check(cfg) {
					t.Fatalf("kbridge ingest %v: problems %q, config %+v", tt.args, probs, cfg)
				}
				return
			}
			for _, w := range tt.probs {
				if !slices.ContainsFunc(probs, func(p string) bool { return strings.Contains(p, w) }) {
					t.Errorf("kbridge ingest %v: no problem says %q: %q", tt.args, w, probs)
				}
			}
		})
	}
}
