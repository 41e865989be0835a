package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/bench"
)

// env is what every benchmark runs against.
type env struct {
	ctx       context.Context
	brokers   []string
	redisAddr string
	kbridge   string // the kbridge binary
	self      string // this binary (kbench worker / sink / ingest)
	dir       string // logs, profiles
	profDir   string // where profiles of missed targets go (docs/profiles)
	quick     bool
	rounds    int
	k         *bench.Kafka
	rdb       *redis.Client
	redisPid  int
	seq       int
	children  []*child
}

func (e *env) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "kbench %s: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// name returns a fresh name for a topic, group or prefix.
func (e *env) name(what string) string {
	e.seq++
	return fmt.Sprintf("kb-%s-%d-%d", what, time.Now().Unix()%100000, e.seq)
}

// pick returns quick in quick mode, full otherwise.
func pick[T any](e *env, full, quick T) T {
	if e.quick {
		return quick
	}
	return full
}

// child is a process the benchmark started.
type child struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	log  string
	addr string // stats address of a kbench worker or sink
}

func (e *env) start(name, bin string, args ...string) (*child, error) {
	logPath := filepath.Join(e.dir, fmt.Sprintf("%s-%d-%d.log", name, os.Getpid(), e.seq))
	e.seq++
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, done: make(chan struct{}), log: logPath}
	go func() { c.err = cmd.Wait(); f.Close(); close(c.done) }()
	e.children = append(e.children, c)
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

func (c *child) sample() bench.ProcSample {
	s, _ := bench.ReadProc(c.pid())
	return s
}

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits up to 20s, then SIGKILL.
func (c *child) stop() {
	if c == nil || c.exited() {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(20 * time.Second):
		c.kill()
	}
}

func (c *child) kill() {
	if c == nil || c.exited() {
		return
	}
	_ = c.cmd.Process.Kill()
	<-c.done
}

// stopAll stops every child still running (the end of a benchmark, or an
// error in the middle of one).
func (e *env) stopAll() {
	for _, c := range e.children {
		c.stop()
	}
	e.children = nil
}

// startIngest runs "kbridge ingest" with its own prefix and group.
func (e *env) startIngest(name, prefix, group string, topics []string, extra ...string) (*child, error) {
	args := []string{"--redis-url", "redis://" + e.redisAddr + "/0", "--prefix", prefix, "--log-format", "json",
		"--log-level", "info", "ingest", "--brokers", strings.Join(e.brokers, ","), "--topics", strings.Join(topics, ","),
		"--group", group}
	return e.start(name, e.kbridge, append(args, extra...)...)
}

// startHTTPWorker runs "kbridge worker --http" against a sink.
func (e *env) startHTTPWorker(name, prefix, url string, extra ...string) (*child, error) {
	args := []string{"--redis-url", "redis://" + e.redisAddr + "/0", "--prefix", prefix, "--log-level", "warn",
		"worker", "--http", url}
	return e.start(name, e.kbridge, append(args, extra...)...)
}

// startWorker runs "kbench worker" (the worker library, synthetic handler).
func (e *env) startWorker(name, prefix, spec string, extra ...string) (*child, error) {
	pf := e.portFile(name)
	args := []string{"worker", "--redis", e.redisAddr, "--prefix", prefix, "--handle", spec, "--port-file", pf}
	c, err := e.start(name, e.self, append(args, extra...)...)
	if err != nil {
		return nil, err
	}
	return c, e.readPort(c, pf)
}

// startSink runs "kbench sink".
func (e *env) startSink(name string, sleep time.Duration) (*child, error) {
	pf := e.portFile(name)
	c, err := e.start(name, e.self, "sink", "--port-file", pf, "--sleep", sleep.String())
	if err != nil {
		return nil, err
	}
	return c, e.readPort(c, pf)
}

// portFile returns a fresh path for a child's port file (none left from an
// earlier run in the same directory).
func (e *env) portFile(name string) string {
	pf := filepath.Join(e.dir, fmt.Sprintf("%s-%d-%d.port", name, os.Getpid(), e.seq))
	e.seq++
	_ = os.Remove(pf)
	return pf
}

func (e *env) readPort(c *child, pf string) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(pf); err == nil && len(b) > 0 {
			if _, err := strconv.Atoi(string(b)); err == nil {
				c.addr = "127.0.0.1:" + string(b)
				return nil
			}
		}
		if c.exited() {
			return fmt.Errorf("%s exited: %v (log %s)", c.name, c.err, c.log)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s: no port after 30s (log %s)", c.name, c.log)
}

func (c *child) counts(ctx context.Context) counts {
	cs, _ := fetchCounts(ctx, c.addr)
	return cs
}

// waitFor polls cond every interval until it is true, ctx is done or
// timeout passes.
func waitFor(ctx context.Context, timeout, interval time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s", timeout, what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}

// xlenSum is the summed length of the streams of partitions 0..n-1.
func (e *env) xlenSum(prefix, topic string, n int) int64 {
	pipe := e.rdb.Pipeline()
	cmds := make([]*redis.IntCmd, n)
	for p := range n {
		cmds[p] = pipe.XLen(e.ctx, streamKey(prefix, topic, p))
	}
	_, _ = pipe.Exec(e.ctx)
	var sum int64
	for _, c := range cmds {
		sum += c.Val()
	}
	return sum
}

func streamKey(prefix, topic string, p int) string {
	return prefix + ":{" + topic + ":" + strconv.Itoa(p) + "}"
}

// allCommitted reports whether the group committed every partition's log end.
func (e *env) allCommitted(group, topic string, ends map[int]int64) bool {
	c, err := e.k.Committed(e.ctx, group, topic, len(ends))
	if err != nil {
		return false
	}
	for p, end := range ends {
		if c[p] < end {
			return false
		}
	}
	return true
}

// cleanRedis deletes every key of prefix.
func (e *env) cleanRedis(prefix string) {
	if err := bench.DeletePrefix(e.ctx, e.rdb, prefix+":"); err != nil {
		e.logf("clean-up of %s: %v", prefix, err)
	}
}

// sleepCtx sleeps d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
