package e2e

import (
	"bufio"
	"errors"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kbridge/kbridge/internal/testenv"
)

// proc is a kbridge process of a test. Every line it writes (stdout and
// stderr) is kept, so tests can look for a message or grep for secrets.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when the process exited and its output was read

	mu    sync.Mutex
	lines []string
	err   error // of Wait
}

// startKbridge runs the kbridge binary with args. The environment is the
// test's without its KBRIDGE_ variables, plus env. The process is killed at
// the end of the test if it still runs; its output is logged if the test
// failed.
func startKbridge(t *testing.T, name string, env []string, args ...string) *proc {
	t.Helper()
	bin := testenv.BuildKbridge(t)
	cmd := exec.Command(bin, args...)
	cmd.Env = append(cleanEnv(), env...)
	r, w := io.Pipe()
	cmd.Stdout, cmd.Stderr = w, w
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	read := make(chan struct{})
	go func() {
		defer close(read)
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			p.mu.Unlock()
		}
		_, _ = io.Copy(io.Discard, r)
	}()
	go func() {
		err := cmd.Wait()
		w.Close()
		<-read
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.exited() {
			_ = cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("---- output of %s (%s) ----\n%s", name, strings.Join(args, " "), p.output())
		}
	})
	return p
}

// cleanEnv is the test's environment without KBRIDGE_ variables, which
// would configure the process behind the test's back.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KBRIDGE_") {
			out = append(out, kv)
		}
	}
	return out
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// output returns every line so far.
func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// allLines returns a copy of the lines so far.
func (p *proc) allLines() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.lines...)
}

// has reports whether a line so far contains every one of subs
// (case-insensitive).
func (p *proc) has(subs ...string) bool {
	return p.line(subs...) != ""
}

// line returns the first line that contains every one of subs
// (case-insensitive), or "".
func (p *proc) line(subs ...string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.lines {
		ll := strings.ToLower(l)
		all := true
		for _, s := range subs {
			if !strings.Contains(ll, strings.ToLower(s)) {
				all = false
				break
			}
		}
		if all {
			return l
		}
	}
	return ""
}

// exitCode waits up to within for the process to exit and returns its exit
// status; ok is false if it still runs.
func (p *proc) exitCode(within time.Duration) (code int, ok bool) {
	select {
	case <-p.done:
	case <-time.After(within):
		return 0, false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode(), true
	}
	if p.err != nil {
		return -1, true
	}
	return 0, true
}

// stop sends SIGTERM and waits up to 30s for a graceful exit (then kills the
// process and fails the test); the test fails unless the exit status is 0.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	if p.exited() {
		code, _ := p.exitCode(0)
		t.Errorf("%s had already exited with status %d", p.name, code)
		return
	}
	began := time.Now()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	code, ok := p.exitCode(30 * time.Second)
	if !ok {
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Errorf("%s still running 30s after SIGTERM: killed", p.name)
		return
	}
	if code != 0 {
		t.Errorf("%s exited with status %d after SIGTERM, want 0", p.name, code)
	}
	t.Logf("%s: SIGTERM → exit %d in %v", p.name, code, time.Since(began).Round(time.Millisecond))
}
