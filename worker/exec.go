package worker

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kbridge/kbridge/internal/wire"
)

// ExecHandler runs a command for each message: the value on its standard
// input, the rest in environment variables (see Env; the worker's own
// KBRIDGE_ variables are not passed on); exit status 0 means
// done, anything else failed (retried, then dead-lettered). The command is
// killed, with its process group, when the handler's context is cancelled or
// Timeout passes, or by KillAll. Its methods are safe for concurrent use; do
// not copy an ExecHandler after first use.
type ExecHandler struct {
	// Command is run with "sh -c", so it may be a pipeline.
	Command string
	// Timeout bounds one run; 0 means no bound beyond the handler's context.
	Timeout time.Duration
	// Stdout receives the command's standard output; nil discards it.
	Stdout func(m *Message, out []byte)
	// Logger receives warnings (a command that exited 0 but left a
	// background process holding its output). Default: discard.
	Logger *slog.Logger

	mu     sync.Mutex
	groups map[int]struct{} // process groups of the commands running
	killed bool             // KillAll was called: kill what starts later too
}

// KillAll kills (SIGKILL) the process groups of every command running, and
// of any started afterwards. It is for a process about to exit at once (a
// second signal): each command runs in a process group of its own, so it
// would not die with the worker and would go on doing its side effect while
// its entry is reclaimed and run by another worker.
// (A worker killed with SIGKILL cannot call it: on Linux the kernel kills
// each command's own process then, see dieWithWorker.)
func (h *ExecHandler) KillAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.killed = true
	for pgid := range h.groups {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	}
}

// track records the process group of a started command (killing it at once
// after KillAll); the returned func forgets it.
func (h *ExecHandler) track(pgid int) (untrack func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.killed {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	}
	if h.groups == nil {
		h.groups = map[int]struct{}{}
	}
	h.groups[pgid] = struct{}{}
	return func() {
		h.mu.Lock()
		delete(h.groups, pgid)
		h.mu.Unlock()
	}
}

// Env returns the environment variables ExecHandler sets for m:
//
//	KBRIDGE_TOPIC, KBRIDGE_PARTITION, KBRIDGE_OFFSET
//	KBRIDGE_TIMESTAMP    Kafka record time, Unix milliseconds
//	KBRIDGE_KEY          the key as text (unset if null or if it holds a NUL byte)
//	KBRIDGE_KEY_B64      the key, base64 (unset if null)
//	KBRIDGE_KEY_NULL     "1" if the key is null
//	KBRIDGE_VALUE_NULL   "1" if the value is null (a tombstone; stdin is empty)
//	KBRIDGE_HEADERS      the headers as on the wire: JSON [["name","<base64>"|null],...]
//	KBRIDGE_DELIVERIES   this delivery's number, from 1
//	KBRIDGE_STREAM, KBRIDGE_ID   where the entry is in Redis
//	KBRIDGE_REPLAYED     "1" for a replayed dead letter
func Env(m *Message) []string {
	env := []string{
		"KBRIDGE_TOPIC=" + m.Topic,
		"KBRIDGE_PARTITION=" + strconv.Itoa(m.Partition),
		"KBRIDGE_OFFSET=" + strconv.FormatInt(m.Offset, 10),
		"KBRIDGE_TIMESTAMP=" + strconv.FormatInt(m.Time.UnixMilli(), 10),
		"KBRIDGE_DELIVERIES=" + strconv.FormatInt(m.Deliveries, 10),
		"KBRIDGE_STREAM=" + m.Stream,
		"KBRIDGE_ID=" + m.ID,
	}
	if m.Key == nil {
		env = append(env, "KBRIDGE_KEY_NULL=1")
	} else {
		env = append(env, "KBRIDGE_KEY_B64="+base64.StdEncoding.EncodeToString(m.Key))
		if bytes.IndexByte(m.Key, 0) < 0 {
			env = append(env, "KBRIDGE_KEY="+string(m.Key))
		}
	}
	if m.Value == nil {
		env = append(env, "KBRIDGE_VALUE_NULL=1")
	}
	if h, ok := m.fields[wire.FieldHeaders].(string); ok {
		env = append(env, "KBRIDGE_HEADERS="+h)
	}
	if m.Replayed {
		env = append(env, "KBRIDGE_REPLAYED=1")
	}
	return env
}

// inheritedEnv returns the worker's environment without its KBRIDGE_
// variables: those are the worker's own configuration, secrets among them
// (KBRIDGE_REDIS_URL may hold a password, KBRIDGE_KAFKA_PASSWORD), and a
// stale KBRIDGE_KEY or KBRIDGE_REPLAYED of the worker's would pass for the
// record's. The command's KBRIDGE_ variables are exactly those of Env.
func inheritedEnv(environ []string) []string {
	out := make([]string, 0, len(environ))
	for _, kv := range environ {
		if !strings.HasPrefix(kv, "KBRIDGE_") {
			out = append(out, kv)
		}
	}
	return out
}

// Handle runs the command for m. It is a Handler.
func (h *ExecHandler) Handle(ctx context.Context, m *Message) error {
	if h.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, h.Timeout)
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", h.Command)
	cmd.Env = append(inheritedEnv(os.Environ()), Env(m)...)
	cmd.Stdin = bytes.NewReader(m.Value)
	var stdout bytes.Buffer
	stderr := &tailBuffer{max: 2048}
	if h.Stdout != nil {
		cmd.Stdout = &stdout
	}
	cmd.Stderr = stderr
	// Own process group, so that a timeout kills the whole pipeline.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	unlock := dieWithWorker(cmd.SysProcAttr) // killed with the worker, even by SIGKILL (Linux)
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	err := cmd.Start()
	if err == nil {
		untrack := h.track(cmd.Process.Pid) // Setpgid: the group ID is the shell's PID
		err = cmd.Wait()
		untrack()
	}
	unlock()
	if h.Stdout != nil && stdout.Len() > 0 {
		h.Stdout(m, stdout.Bytes())
	}
	if errors.Is(err, exec.ErrWaitDelay) && cmd.ProcessState != nil && cmd.ProcessState.Success() {
		// The command exited 0 but left a process in the background with
		// its stdout or stderr open (e.g. "job &"): Wait gave up on the
		// pipes after WaitDelay. The command itself succeeded.
		if h.Logger != nil {
			h.Logger.Warn("command exited 0 but left a background process holding its output; counted as done",
				"stream", m.Stream, "id", m.ID, "offset", m.Offset)
		}
		err = nil
	}
	if err == nil {
		return nil
	}
	code := -1
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	}
	if ctx.Err() != nil {
		err = errors.Join(err, ctx.Err())
	}
	return &ExecError{ExitCode: code, Stderr: string(bytes.TrimSpace(stderr.buf)), Err: err}
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	buf []byte
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = t.buf[len(t.buf)-t.max:]
	}
	return len(p), nil
}
