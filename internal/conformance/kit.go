package conformance

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/wire"
)

// Config configures a conformance run. The zero value of every field but
// RedisURL and Command means its default.
type Config struct {
	// RedisURL is the Redis the worker and the kit use (required): a single
	// node (not a cluster), version 7.0 or later. The kit writes only keys
	// under its own prefixes and deletes them at the end (unless Keep).
	RedisURL string
	// Command is the worker command and its arguments (required).
	Command []string
	// Run selects the scenarios whose name matches (default: all).
	Run *regexp.Regexp
	// VisibilityTimeout of the group. Default 2s.
	VisibilityTimeout time.Duration
	// MaxDeliveries before a dead letter. Default 3.
	MaxDeliveries int
	// Backoff is the first retry backoff given to the worker. Default 100ms.
	Backoff time.Duration
	// ShutdownTimeout given to the worker. Default 3s.
	ShutdownTimeout time.Duration
	// Patience is how long the kit waits for what needs no reclaim (a
	// record handled, a dead letter written, an exit). Default 30s.
	Patience time.Duration
	// Parallel is how many scenarios run at once (each with its own
	// prefix, worker processes and events file). Default 4; 1 runs them one
	// after the other.
	Parallel int
	// Dir receives the worker's output and the handler events, one file per
	// scenario. Default: a temporary directory, removed at the end unless a
	// scenario failed or Keep.
	Dir string
	// Keep leaves the keys and Dir in place.
	Keep bool
	// Progress receives one line per scenario step (nil: discard).
	Progress io.Writer
}

// Defaults of Config.
const (
	DefaultVisibilityTimeout = 2 * time.Second
	DefaultMaxDeliveries     = 3
	DefaultBackoff           = 100 * time.Millisecond
	DefaultShutdownTimeout   = 3 * time.Second
	DefaultPatience          = 30 * time.Second
	DefaultParallel          = 4
	// VersionWait is how long a worker may take to notice that the wire
	// version changed while it runs ("at each discovery": every few
	// seconds).
	VersionWait = 10 * time.Second
	// Group is the worker group of every scenario.
	Group = "workers"
)

// Validate reports every problem of the configuration at once.
func (c *Config) Validate() error {
	var errs []error
	if c.RedisURL == "" {
		errs = append(errs, errors.New("conformance: a Redis URL is required"))
	} else if _, err := redis.ParseURL(c.RedisURL); err != nil {
		errs = append(errs, errors.New("conformance: the Redis URL does not parse (not repeated here: it may hold a password); percent-encode % # ? / @ : and spaces in its user name or password"))
	}
	if len(c.Command) == 0 {
		errs = append(errs, errors.New("conformance: a worker command is required (after --)"))
	}
	if c.VisibilityTimeout < 0 || (c.VisibilityTimeout > 0 && c.VisibilityTimeout < 300*time.Millisecond) {
		errs = append(errs, fmt.Errorf("conformance: visibility timeout %v: want at least 300ms", c.VisibilityTimeout))
	}
	if c.MaxDeliveries < 0 || c.MaxDeliveries == 1 {
		errs = append(errs, fmt.Errorf("conformance: max deliveries %d: want at least 2 (the retry scenario needs a retry)", c.MaxDeliveries))
	}
	if c.Backoff < 0 {
		errs = append(errs, fmt.Errorf("conformance: backoff %v must not be negative", c.Backoff))
	}
	if c.Patience < 0 {
		errs = append(errs, fmt.Errorf("conformance: patience %v must not be negative", c.Patience))
	}
	if c.Parallel < 0 {
		errs = append(errs, fmt.Errorf("conformance: parallel %d must not be negative", c.Parallel))
	}
	if c.ShutdownTimeout < 0 {
		errs = append(errs, fmt.Errorf("conformance: shutdown timeout %v must not be negative", c.ShutdownTimeout))
	}
	return errors.Join(errs...)
}

func (c Config) withDefaults() Config {
	if c.VisibilityTimeout == 0 {
		c.VisibilityTimeout = DefaultVisibilityTimeout
	}
	if c.MaxDeliveries == 0 {
		c.MaxDeliveries = DefaultMaxDeliveries
	}
	if c.Backoff == 0 {
		c.Backoff = DefaultBackoff
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.Patience == 0 {
		c.Patience = DefaultPatience
	}
	if c.Parallel == 0 {
		c.Parallel = DefaultParallel
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	c.Progress = &lockedWriter{w: c.Progress}
	return c
}

// lockedWriter serializes the progress lines of scenarios that run at once.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// kit is one conformance run.
type kit struct {
	cfg    Config
	rdb    *redis.Client
	base   string // prefix of every key of the run
	dir    string
	report *Report
}

// Run runs the scenarios and returns the report. The error is for what
// stopped the kit itself (bad configuration, Redis unreachable or too old);
// a worker that breaks a rule is in the report.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	opt, _ := redis.ParseURL(cfg.RedisURL)
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	if err := checkRedis(ctx, rdb); err != nil {
		return nil, err
	}
	k := &kit{cfg: cfg, rdb: rdb, base: "kbconf-" + randHex(4), report: newReport(cfg)}
	k.dir = cfg.Dir
	if k.dir == "" {
		d, err := os.MkdirTemp("", "kbridge-conformance-")
		if err != nil {
			return nil, err
		}
		k.dir = d
	} else if err := os.MkdirAll(k.dir, 0o755); err != nil {
		return nil, err
	}
	k.report.Dir = k.dir
	var chosen []scenario
	for _, sc := range scenarios {
		if cfg.Run == nil || cfg.Run.MatchString(sc.name) {
			chosen = append(chosen, sc)
		}
	}
	// Scenarios run at once, Parallel at a time, in the order of the list
	// (the longest first): each has its own prefix, processes and events.
	k.report.Scenarios = make([]ScenarioResult, len(chosen))
	sem := make(chan struct{}, cfg.Parallel)
	var wg sync.WaitGroup
	for i, sc := range chosen {
		sem <- struct{}{}
		if ctx.Err() != nil {
			<-sem
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			k.report.setScenario(i, k.runScenario(ctx, sc))
		}()
	}
	wg.Wait()
	k.report.Scenarios = slices.DeleteFunc(k.report.Scenarios, func(r ScenarioResult) bool { return r.Name == "" })
	if !cfg.Keep {
		k.deleteKeys(context.WithoutCancel(ctx))
		if cfg.Dir == "" && k.report.Passed() {
			_ = os.RemoveAll(k.dir)
			k.report.Dir = ""
		}
	}
	return k.report, ctx.Err()
}

// checkRedis refuses what the kit cannot run on: Redis unreachable, a
// cluster, a version before 7.0.
func checkRedis(ctx context.Context, rdb *redis.Client) error {
	info, err := rdb.Info(ctx, "server", "cluster").Result()
	if err != nil {
		return fmt.Errorf("conformance: Redis: %w", err)
	}
	var version string
	for _, line := range strings.Split(info, "\n") {
		line = strings.TrimSpace(line)
		if v, ok := strings.CutPrefix(line, "redis_version:"); ok {
			version = v
		}
		if line == "cluster_enabled:1" {
			return errors.New("conformance: Redis is a cluster node; give a single Redis (the kit's keys would span slots)")
		}
	}
	major, _ := strconv.Atoi(strings.SplitN(version, ".", 2)[0])
	if major < 7 {
		return fmt.Errorf("conformance: Redis %s: the wire contract needs Redis 7.0 or later", version)
	}
	return nil
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// scenario is one scenario: run drives it and records rule results.
type scenario struct {
	name  string
	rules []string // the rules it checks, for the report when it cannot run
	run   func(ctx context.Context, s *run) error
}

// run is the state of one scenario run.
type run struct {
	k       *kit
	name    string
	prefix  string
	events  string // CONFORMANCE_LOG
	procs   []*proc
	checked map[string]bool
	streams []string // the streams the scenario created, for the loss check
	badLine string   // the first line of the events file that is not an event
}

func (k *kit) runScenario(ctx context.Context, sc scenario) ScenarioResult {
	s := &run{k: k, name: sc.name, prefix: k.base + "-" + sc.name, events: filepath.Join(k.dir, sc.name+".events"), checked: map[string]bool{}}
	start := time.Now()
	fmt.Fprintf(k.cfg.Progress, "scenario %s ...\n", sc.name)
	// Every scenario runs as if an ingest of this version had started.
	err := k.rdb.HSet(ctx, wire.VersionKey(s.prefix), wire.FieldVersion, wire.Version).Err()
	if err == nil {
		err = sc.run(ctx, s)
	}
	s.stopAll()
	if err == nil {
		// Whatever the scenario checked, nothing the group read may be lost.
		err = s.checkNothingLost(context.WithoutCancel(ctx))
	}
	if err != nil {
		for _, id := range sc.rules {
			k.report.fail(id, sc.name, "scenario stopped: %v", err)
		}
	}
	if s.badLine != "" {
		for _, id := range sc.rules {
			k.report.fail(id, sc.name, "the handler wrote a line that is not an event (see \"The conformance kit\" in docs/wire.md): %s", s.badLine)
		}
	}
	for _, id := range sc.rules {
		if !s.checked[id] && err == nil {
			k.report.fail(id, sc.name, "not checked: the scenario ended before it could be")
		}
	}
	took := time.Since(start).Round(10 * time.Millisecond)
	fmt.Fprintf(k.cfg.Progress, "scenario %s done in %v\n", sc.name, took)
	return ScenarioResult{Name: sc.name, Took: took, Err: errString(err)}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// check records the outcome of one check of a rule.
func (s *run) check(rule string, ok bool, format string, args ...any) bool {
	s.checked[rule] = true
	if ok {
		s.k.report.pass(rule, s.name)
	} else {
		s.k.report.fail(rule, s.name, format, args...)
	}
	return ok
}

// logf reports progress.
func (s *run) logf(format string, args ...any) {
	fmt.Fprintf(s.k.cfg.Progress, "  %s: %s\n", s.name, fmt.Sprintf(format, args...))
}

// figure records a measured figure for the report.
func (s *run) figure(format string, args ...any) {
	f := fmt.Sprintf(format, args...)
	s.k.report.addFigure(s.name + ": " + f)
	s.logf("%s", f)
}

// proc is a worker process started by the kit.
type proc struct {
	label, consumer string
	cmd             *exec.Cmd
	out             string // file with its stdout and stderr
	done            chan struct{}
	mu              sync.Mutex
	exitCode        int // valid once done is closed; -1 killed by a signal
}

// start starts the worker command with the scenario's environment.
func (s *run) start(label string) (*proc, error) {
	cfg := s.k.cfg
	p := &proc{label: label, consumer: "conf-" + s.name + "-" + label + "-" + randHex(3), done: make(chan struct{})}
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KBRIDGE_") && !strings.HasPrefix(kv, "CONFORMANCE_") {
			env = append(env, kv)
		}
	}
	env = append(env,
		"KBRIDGE_REDIS_URL="+cfg.RedisURL,
		"KBRIDGE_PREFIX="+s.prefix,
		"KBRIDGE_GROUP="+Group,
		"KBRIDGE_CONSUMER="+p.consumer,
		"KBRIDGE_VISIBILITY_TIMEOUT_MS="+strconv.FormatInt(cfg.VisibilityTimeout.Milliseconds(), 10),
		"KBRIDGE_MAX_DELIVERIES="+strconv.Itoa(cfg.MaxDeliveries),
		"KBRIDGE_BACKOFF_MS="+strconv.FormatInt(cfg.Backoff.Milliseconds(), 10),
		"KBRIDGE_SHUTDOWN_TIMEOUT_MS="+strconv.FormatInt(cfg.ShutdownTimeout.Milliseconds(), 10),
		"CONFORMANCE_LOG="+s.events,
		"CONFORMANCE_WORKER="+label,
	)
	p.out = filepath.Join(s.k.dir, s.name+"."+label+".out")
	f, err := os.Create(p.out)
	if err != nil {
		return nil, err
	}
	p.cmd = exec.Command(cfg.Command[0], cfg.Command[1:]...)
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = f, f
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", strings.Join(cfg.Command, " "), err)
	}
	go func() {
		err := p.cmd.Wait()
		f.Close()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			code = -1
		}
		p.mu.Lock()
		p.exitCode = code
		p.mu.Unlock()
		close(p.done)
	}()
	s.procs = append(s.procs, p)
	s.logf("started worker %s (consumer %s, pid %d)", label, p.consumer, p.cmd.Process.Pid)
	return p, nil
}

// exited reports whether the process has exited, and its exit code.
func (p *proc) exited() (bool, int) {
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return true, p.exitCode
	default:
		return false, 0
	}
}

// wait waits up to d for the process to exit.
func (p *proc) wait(d time.Duration) (bool, int) {
	select {
	case <-p.done:
	case <-time.After(d):
	}
	return p.exited()
}

func (p *proc) signal(sig syscall.Signal) { _ = p.cmd.Process.Signal(sig) }

// kill SIGKILLs the process group: the worker and whatever it started.
func (p *proc) kill() { _ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL) }

// tail returns the end of the process's output, for failure messages.
func (p *proc) tail() string {
	b, _ := os.ReadFile(p.out)
	if len(b) > 1500 {
		b = b[len(b)-1500:]
	}
	return strings.TrimSpace(string(b))
}

// stopAll stops the scenario's processes: SIGTERM, then SIGKILL of the
// process group after the shutdown timeout and a margin; leftovers of the
// group (handlers a worker started) are killed in any case.
func (s *run) stopAll() {
	for _, p := range s.procs {
		if done, _ := p.exited(); !done {
			p.signal(syscall.SIGTERM)
		}
	}
	for _, p := range s.procs {
		p.wait(s.k.cfg.ShutdownTimeout + 5*time.Second)
		p.kill()
		p.wait(5 * time.Second)
	}
}

// alive fails the scenario when a worker process exited on its own.
func (s *run) alive() error {
	for _, p := range s.procs {
		if done, code := p.exited(); done {
			return fmt.Errorf("worker %s exited (status %d) during the scenario; its output ends with:\n%s", p.label, code, p.tail())
		}
	}
	return nil
}

// until polls cond every 50ms until it holds (true), d passes or ctx is
// done (false). A worker that exits on its own ends the wait with an error.
func (s *run) until(ctx context.Context, d time.Duration, cond func() bool) (bool, error) {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true, nil
		}
		if err := s.alive(); err != nil {
			return false, err
		}
		if time.Now().After(deadline) {
			return false, nil
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// readEvents returns the handler events so far. A line that is not an
// event fails the scenario's rules once, when the scenario ends (a handler
// must write what the kit can read).
func (s *run) readEvents() []Event {
	evs, bad := readEvents(s.events)
	if len(bad) > 0 && s.badLine == "" {
		s.badLine = bad[0]
	}
	return evs
}

// reclaimWait is how long the kit waits for something that takes a
// reclaim: the visibility timeout, a reclaim interval (at most 5s for
// kbridge worker) and a margin for a loaded machine.
func (k *kit) reclaimWait() time.Duration { return 2*k.cfg.VisibilityTimeout + 10*time.Second }

// deleteKeys removes every key of the run.
func (k *kit) deleteKeys(ctx context.Context) {
	iter := k.rdb.Scan(ctx, 0, k.base+"-*", 500).Iterator()
	var keys []string
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	for c := range slices.Chunk(keys, 500) {
		k.rdb.Del(ctx, c...)
	}
}
