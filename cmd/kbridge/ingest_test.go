package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

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
