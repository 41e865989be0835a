package worker

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kbridge/kbridge/internal/testenv"
)

// TestExecIgnoresSIGTERMAtShutdown: an --exec command (a pipeline)
// that ignores SIGTERM and would run for a minute. Shutdown waits
// ShutdownTimeout, then kills the command's process group: Run returns
// ErrShutdownTimeout within a few seconds, no process of the command is
// left, and the entry stays pending (reclaimed later), not acknowledged.
func TestExecIgnoresSIGTERMAtShutdown(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	e.add(t, s, 0, 1)
	dir := t.TempDir()
	pids := filepath.Join(dir, "pids")
	h := &ExecHandler{Command: "trap '' TERM; (trap '' TERM; echo $$ >> " + pids + "; sh -c 'echo $$ >> " + pids + "; sleep 60') | cat"}
	cfg := e.config(h.Handle)
	cfg.ShutdownTimeout = 500 * time.Millisecond
	w := mustNew(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- w.Run(ctx) }()
	testenv.Eventually(t, 10*time.Second, func() bool {
		b, _ := os.ReadFile(pids)
		return len(strings.Fields(string(b))) >= 2
	}, "the command did not start")
	start := time.Now()
	cancel()
	var err error
	select {
	case err = <-errc:
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return 15s after cancel with a command ignoring SIGTERM")
	}
	took := time.Since(start)
	if !errors.Is(err, ErrShutdownTimeout) {
		t.Errorf("Run = %v, want ErrShutdownTimeout", err)
	}
	b, _ := os.ReadFile(pids)
	var alive []string
	testenv.Eventually(t, 5*time.Second, func() bool {
		alive = alive[:0]
		for _, f := range strings.Fields(string(b)) {
			pid, _ := strconv.Atoi(f)
			if pid > 0 && syscall.Kill(pid, 0) == nil {
				if st, _ := os.ReadFile("/proc/" + f + "/stat"); !strings.Contains(string(st), ") Z ") {
					alive = append(alive, f)
				}
			}
		}
		return len(alive) == 0
	}, "processes of the command still running after Run returned: %v", alive)
	if n := e.pending(t, s, DefaultGroup); n != 1 {
		t.Errorf("pending = %d after the killed command, want 1 (left to be reclaimed)", n)
	}
	t.Logf("Run returned %v after cancel (shutdown timeout %v): %v; pids %q gone", took.Round(time.Millisecond), cfg.ShutdownTimeout, err, strings.Fields(string(b)))
}
