package worker

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/kbridge/kbridge/internal/testenv"
)

// shellWorker returns the shell worker of docs/wire.md.
func shellWorker(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	doc, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "docs", "wire.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok1 := strings.Cut(string(doc), "<!-- shell-worker -->\n```sh\n")
	script, _, ok2 := strings.Cut(rest, "```\n<!-- /shell-worker -->")
	if !ok1 || !ok2 {
		t.Fatal("docs/wire.md has no shell worker between <!-- shell-worker --> markers")
	}
	return script
}

// TestShellWorkerFromDocs: the redis-cli worker of docs/wire.md runs beside
// a Go worker in the same group; together they process every record once,
// and the ingest's commits, which account for the shell worker's acks, reach
// the log end.
func TestShellWorkerFromDocs(t *testing.T) {
	testenv.RequireReal(t, "redis-cli against a real Redis")
	if _, err := exec.LookPath("redis-cli"); err != nil {
		t.Skip("redis-cli not installed")
	}
	script := shellWorker(t)
	if n := strings.Count(script, "\n"); n > 30 {
		t.Errorf("the shell worker has %d lines; the docs promise about twenty", n)
	}
	p := newPipeline(t, 2)
	testenv.Produce(t, p.brokers, p.topic, 0, 1000)
	dir := t.TempDir()
	out := filepath.Join(dir, "done.log")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sh := exec.CommandContext(ctx, "sh", "-c", script)
	sh.Env = append(os.Environ(), "REDIS_URL=redis://"+p.redisAddr+"/0", "PREFIX="+p.prefix, "OUT="+out, "CONSUMER=shell-1")
	var shOut bytes.Buffer
	sh.Stdout, sh.Stderr = &shOut, &shOut
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = sh.Wait() }()
	lines := func() []string {
		b, _ := os.ReadFile(out)
		return strings.Fields(strings.ReplaceAll(string(b), "\n", " "))
	}
	testenv.Eventually(t, time.Minute, func() bool { return len(lines()) >= 40 }, "shell worker handled nothing: %s", &shOut)

	got := newSeen()
	w := mustNew(t, p.config(func(ctx context.Context, m *Message) error { got.add(m); return nil }))
	running(t, w)
	p.committedAll(t, 2*time.Minute)
	cancel()
	_ = sh.Wait()
	shell := lines()
	seen := map[string]int{}
	for i := 0; i+1 < len(shell); i += 2 { // "<partition>/<offset> <value>"
		seen[shell[i]]++
	}
	for s, offs := range got.n {
		for o, c := range offs {
			_ = s
			seen[partOf(s)+"/"+itoa(o)] += c
		}
	}
	t.Logf("shell worker handled %d records, Go worker %d; commits at the log end", len(shell)/2, got.total())
	if len(seen) != 1000 {
		t.Errorf("distinct records handled = %d, want 1000", len(seen))
	}
	for k, c := range seen {
		if c != 1 {
			t.Errorf("record %s handled %d times", k, c)
		}
	}
}
