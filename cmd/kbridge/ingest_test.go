package main

import (
	"strings"
	"testing"
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
