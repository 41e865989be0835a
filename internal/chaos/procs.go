package chaos

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is one kbridge process (an ingest or a worker) that the harness
// starts, signals and starts again. Its output goes to LogPath (appended to
// across restarts, with a marker line per start). Safe for concurrent use.
type Proc struct {
	Name    string // e.g. "ingest-1"
	Kind    string // "ingest" or "worker"
	Bin     string
	Args    []string
	Env     []string
	LogPath string

	mu       sync.Mutex
	cmd      *exec.Cmd
	exited   chan struct{} // closed when the current incarnation exited
	state    procState
	expected bool // the next exit was asked for (SIGKILL, SIGTERM)
	starts   int
	exits    []Exit
}

type procState int

const (
	procDown procState = iota
	procRunning
	procPaused
)

// Exit is how one incarnation of a Proc ended.
type Exit struct {
	At       time.Time
	Code     int // -1: killed by a signal
	Signal   string
	Expected bool // the harness asked for it
	Err      string
}

// Start starts the process; it must not be running.
func (p *Proc) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != procDown {
		return fmt.Errorf("%s: already running", p.Name)
	}
	f, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	p.starts++
	fmt.Fprintf(f, "{\"time\":%q,\"level\":\"HARNESS\",\"msg\":\"start #%d of %s\"}\n",
		time.Now().Format(time.RFC3339Nano), p.starts, p.Name)
	cmd := exec.Command(p.Bin, p.Args...)
	cmd.Env = append(os.Environ(), p.Env...)
	cmd.Stdout, cmd.Stderr = f, f
	// A process group of its own: a terminal's ^C reaches the harness only,
	// which stops everything in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", p.Name, err)
	}
	f.Close() // the child holds its own descriptor
	p.cmd, p.state, p.expected = cmd, procRunning, false
	exited := make(chan struct{})
	p.exited = exited
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		defer p.mu.Unlock()
		e := Exit{At: time.Now(), Expected: p.expected, Code: cmd.ProcessState.ExitCode()}
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			e.Signal = ws.Signal().String()
		}
		if err != nil {
			e.Err = err.Error()
		}
		p.exits = append(p.exits, e)
		if p.cmd == cmd {
			p.state = procDown
		}
		close(exited)
	}()
	return nil
}

// Pid returns the running process's pid, or 0.
func (p *Proc) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == procDown || p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Running reports whether the process runs (paused counts as running).
func (p *Proc) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state != procDown
}

// Paused reports whether the process is stopped by SIGSTOP.
func (p *Proc) Paused() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state == procPaused
}

func (p *Proc) signal(sig syscall.Signal, expectExit bool) (chan struct{}, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == procDown {
		return nil, fmt.Errorf("%s: not running", p.Name)
	}
	if expectExit {
		p.expected = true
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		return nil, fmt.Errorf("%s: %v: %w", p.Name, sig, err)
	}
	switch sig {
	case syscall.SIGSTOP:
		p.state = procPaused
	case syscall.SIGCONT:
		p.state = procRunning
	}
	return p.exited, nil
}

// Kill SIGKILLs the process and waits until it is gone.
func (p *Proc) Kill() error {
	exited, err := p.signal(syscall.SIGKILL, true)
	if err != nil {
		return err
	}
	select {
	case <-exited:
		return nil
	case <-time.After(30 * time.Second):
		return fmt.Errorf("%s: still running 30s after SIGKILL", p.Name)
	}
}

// Pause SIGSTOPs the process.
func (p *Proc) Pause() error { _, err := p.signal(syscall.SIGSTOP, false); return err }

// Resume SIGCONTs the process.
func (p *Proc) Resume() error { _, err := p.signal(syscall.SIGCONT, false); return err }

// Term SIGTERMs the process (resuming it first if paused) and waits up to
// timeout for it to exit; then it SIGKILLs it. It returns how long the exit
// took and the exit, or an error if the process had to be killed.
func (p *Proc) Term(timeout time.Duration) (time.Duration, Exit, error) {
	if p.Paused() {
		_ = p.Resume()
	}
	began := time.Now()
	exited, err := p.signal(syscall.SIGTERM, true)
	if err != nil {
		return 0, Exit{}, err
	}
	select {
	case <-exited:
		took := time.Since(began)
		return took, p.LastExit(), nil
	case <-time.After(timeout):
	}
	_ = p.Kill()
	return time.Since(began), p.LastExit(), fmt.Errorf("%s: did not exit within %v of SIGTERM; SIGKILLed", p.Name, timeout)
}

// LastExit returns the last exit, or a zero Exit.
func (p *Proc) LastExit() Exit {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.exits) == 0 {
		return Exit{}
	}
	return p.exits[len(p.exits)-1]
}

// Exits returns every exit so far.
func (p *Proc) Exits() []Exit {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Exit(nil), p.exits...)
}

// Starts returns how many times the process was started.
func (p *Proc) Starts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.starts
}

// Unexpected returns the exits the harness did not ask for, described.
func (p *Proc) Unexpected() []string {
	var out []string
	for _, e := range p.Exits() {
		if !e.Expected {
			out = append(out, fmt.Sprintf("%s exited by itself at %s: code %d %s %s; its last log lines: %s",
				p.Name, e.At.Format("15:04:05.000"), e.Code, e.Signal, e.Err, tail(p.LogPath, 3)))
		}
	}
	return out
}

// tail returns the last n lines of a file, for reports.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
