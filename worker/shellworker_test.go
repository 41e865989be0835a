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

// shellWorker returns the path of examples/shell/worker.sh, after checking
// that docs/wire.md publishes it verbatim between <!-- shell-worker -->
// markers.
func shellWorker(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..")
	doc, err := os.ReadFile(filepath.Join(root, "docs", "wire.md"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(root, "examples", "shell", "worker.sh")
	script, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok1 := strings.Cut(string(doc), "<!-- shell-worker -->\n```sh\n")
	published, _, ok2 := strings.Cut(rest, "```\n<!-- /shell-worker -->")
	if !ok1 || !ok2 {
		t.Fatal("docs/wire.md has no shell worker between <!-- shell-worker --> markers")
	}
	if published != string(script) {
		t.Fatal("the shell worker in docs/wire.md differs from examples/shell/worker.sh")
	}
	return path
}

// TestShellWorkerFromDocs: the redis-cli worker of docs/wire.md
// (examples/shell/worker.sh) runs beside
// a Go worker in the same group; together they process every record once,
// and the ingest's commits, which account for the shell worker's acks, reach
// the log end.
func TestShellWorkerFromDocs(t *testing.T) {
	testenv.RequireReal(t, "redis-cli against a real Redis")
	if _, err := exec.LookPath("redis-cli"); err != nil {
		t.Skip("redis-cli not installed")
	}
	script := shellWorker(t)
	p := newPipeline(t, 2)
	testenv.Produce(t, p.brokers, p.topic, 0, 1000)
	dir := t.TempDir()
	out := filepath.Join(dir, "done.log")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sh := exec.CommandContext(ctx, "sh", script)
	sh.Env = append(os.Environ(), "KBRIDGE_REDIS_URL=redis://"+p.redisAddr+"/0", "KBRIDGE_PREFIX="+p.prefix, "KBRIDGE_CONSUMER=shell-1",
		"OUT="+out, `HANDLER=echo "$KBRIDGE_PARTITION/$KBRIDGE_OFFSET $(cat)" >> "$OUT"`)
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
	cfg := p.config(func(ctx context.Context, m *Message) error { got.add(m); return nil })
	// One visibility timeout per group (docs/wire.md, rule 7): the shell
	// worker's default, 30s. With the helpers' 600ms the Go worker took
	// records the shell worker was still running (duplicates under load).
	cfg.VisibilityTimeout = 30 * time.Second
	w := mustNew(t, cfg)
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
