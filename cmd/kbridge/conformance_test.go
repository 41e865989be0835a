package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kbridge/kbridge/internal/testenv"
)

// TestConformanceBadInput: bad flags exit 2 with every reason, before
// touching Redis.
func TestConformanceBadInput(t *testing.T) {
	_, errs, code := runCLI(t, "--redis-url", "redis://127.0.0.1:1/0", "conformance", "--run", "(", "--max-deliveries", "1", "--visibility-timeout", "10ms")
	for _, want := range []string{"--run \"(\"", "max deliveries 1", "visibility timeout 10ms", "a worker command is required"} {
		if code != 2 || !strings.Contains(errs, want) {
			t.Errorf("exit %d, stderr %q: want exit 2 and %q", code, errs, want)
		}
	}
	_, errs, code = runCLI(t, "--redis-url", "redis://127.0.0.1:1/0", "--redis-cluster", "conformance", "--", "true")
	if code != 2 || !strings.Contains(errs, "single Redis") {
		t.Errorf("--redis-cluster: exit %d, stderr %q; want exit 2 and a single Redis", code, errs)
	}
	_, errs, code = runCLI(t, "--redis-url", "redis://127.0.0.1:1/0", "conformance", "-q", "--", "true")
	if code != 1 || !strings.Contains(errs, "Redis") {
		t.Errorf("unreachable Redis: exit %d, stderr %q; want exit 1 and the Redis error", code, errs)
	}
}

// TestConformanceCommand: "kbridge conformance --run shutdown" on kbridge
// worker passes W17 and exits 0; "--run version" on a worker that ignores
// the version ("sleep 30") fails W1 and exits 1.
func TestConformanceCommand(t *testing.T) {
	if !testenv.RealRedis() {
		t.Skip("needs a real Redis: set REDIS_ADDR, or run scripts/test.sh")
	}
	bin := testenv.BuildKbridge(t)
	wd, _ := os.Getwd()
	script := filepath.Join(wd, "..", "..", "examples", "conformance", "kbridge-worker.sh")
	url := "redis://" + os.Getenv("REDIS_ADDR") + "/0"
	out, errs, code := runCLI(t, "--redis-url", url, "conformance", "-q", "--run", "^shutdown$", "--", "sh", script, bin)
	t.Logf("kbridge worker:\n%s", out)
	if code != 0 || !strings.Contains(out, "W17   pass") || !strings.Contains(out, "W20   pass") {
		t.Errorf("exit %d, stderr %q: want exit 0, W17 and W20 pass", code, errs)
	}
	out, _, code = runCLI(t, "--redis-url", url, "conformance", "-q", "--run", "^version$", "--patience", "2s", "--", "sleep", "30")
	if code != 1 || !strings.Contains(out, "W1    FAIL") {
		t.Errorf("a worker that ignores the version: exit %d, stdout %q: want exit 1 and W1 FAIL", code, out)
	}
}
