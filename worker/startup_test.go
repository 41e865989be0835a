package worker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

// replyError is a Redis error reply, as a fault injected by faultHook.
type replyError string

func (e replyError) Error() string { return string(e) }
func (replyError) RedisError()     {}

// faultHook fails the commands and dials its functions choose (nil: pass).
type faultHook struct {
	dial func() error
	cmd  func(name string, args []any) error
}

func (h faultHook) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if h.dial != nil {
			if err := h.dial(); err != nil {
				return nil, err
			}
		}
		return next(ctx, network, addr)
	}
}

func (h faultHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.cmd != nil {
			if err := h.cmd(cmd.FullName(), cmd.Args()); err != nil {
				cmd.SetErr(err)
				return err
			}
		}
		return next(ctx, cmd)
	}
}

func (h faultHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// runFor runs w until it returns or d passes (then it is cancelled and the
// test fails).
func runFor(t *testing.T, w *Worker, d time.Duration) (err error, took time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	start := time.Now()
	err = w.Run(ctx)
	took = time.Since(start)
	if ctx.Err() != nil {
		t.Fatalf("Run still running after %v (returned %v)", d, err)
	}
	return err, took
}

// TestStartupRefused: credentials, ACL and TLS refusals at start make Run
// return an *AuthError at once, naming the cause, having read nothing (the
// entries stay undelivered, the handler never runs): WRONGPASS from the
// server itself (a user that does not exist), and, injected through a
// client hook, NOPERM on a command (the message names each one refused),
// the error a script gets for a command its user may not run, NOAUTH, and
// a certificate that does not verify.
func TestStartupRefused(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	e.add(t, s, 0, 5)
	addr := e.rdb.Options().Addr
	for _, tt := range []struct {
		name string
		opts func(o *redis.Options)
		hook faultHook
		want []string // in the message
	}{
		{name: "wrong-user", opts: func(o *redis.Options) { o.Username, o.Password = "no-such-user-"+e.prefix, "wrong" },
			want: []string{"WRONGPASS", "check the user and password"}},
		{name: "noauth", hook: faultHook{cmd: func(string, []any) error { return replyError("NOAUTH Authentication required.") }},
			want: []string{"NOAUTH", "check the user and password"}},
		{name: "noperm-xack-xclaim", hook: faultHook{cmd: func(name string, _ []any) error {
			if name == "xack" || name == "xclaim" {
				return replyError("NOPERM User kb has no permissions to run the '" + name + "' command")
			}
			return nil
		}}, want: []string{"may not run XACK, XCLAIM on " + e.prefix + ":*", "NOPERM", "ACL rule"}},
		{name: "script-command", hook: faultHook{cmd: func(name string, _ []any) error {
			if name == "eval" {
				return replyError("ERR The user executing the script can't run this command or subcommand script: ...")
			}
			return nil
		}}, want: []string{"may not run EVAL", "can't run this command"}},
		{name: "tls-unknown-authority", hook: faultHook{dial: func() error {
			return &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}
		}}, want: []string{"certificate signed by unknown authority", "--redis-tls-ca"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := &redis.Options{Addr: addr, MaxRetries: -1}
			if tt.opts != nil {
				tt.opts(o)
			}
			rdb := redis.NewClient(o)
			defer rdb.Close()
			rdb.AddHook(tt.hook)
			var calls atomic.Int64
			cfg := e.config(func(context.Context, *Message) error { calls.Add(1); return nil })
			cfg.Redis = rdb
			err, took := runFor(t, mustNew(t, cfg), 20*time.Second)
			var ae *AuthError
			if !errors.As(err, &ae) {
				t.Fatalf("Run = %v (%T); want an *AuthError", err, err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Run = %q; want it to contain %q", err, w)
				}
			}
			if calls.Load() != 0 || e.pending(t, s, DefaultGroup) != 0 {
				t.Errorf("handler ran %d times, %d pending: want nothing read", calls.Load(), e.pending(t, s, DefaultGroup))
			}
			t.Logf("Run returned after %v: %v", took.Round(time.Millisecond), err)
		})
	}
}

// TestStartupRetriesUnreachable: a Redis that cannot be reached (refused
// dials) or is loading at start is retried with backoff and logged; once
// it answers, the worker starts and handles the records.
func TestStartupRetriesUnreachable(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	e.add(t, s, 0, 5)
	var dials, loading atomic.Int64
	rdb := redis.NewClient(&redis.Options{Addr: e.rdb.Options().Addr, MaxRetries: -1})
	defer rdb.Close()
	rdb.AddHook(faultHook{
		dial: func() error {
			if dials.Add(1) <= 3 {
				return &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
			}
			return nil
		},
		cmd: func(name string, _ []any) error {
			if name == "eval" && loading.Add(1) <= 2 {
				return replyError("LOADING Redis is loading the dataset in memory")
			}
			return nil
		},
	})
	var logs syncBuffer
	sn := newSeen()
	cfg := e.config(func(_ context.Context, m *Message) error { sn.add(m); return nil })
	cfg.Redis = rdb
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	w := mustNew(t, cfg)
	stop := running(t, w)
	testenv.Eventually(t, 20*time.Second, func() bool { return sn.distinct() == 5 }, "records not handled after Redis became reachable")
	if err := stop(); err != nil {
		t.Errorf("Run = %v after the retries; want nil", err)
	}
	n := strings.Count(logs.String(), "Redis not usable at start; retrying")
	if n < 2 {
		t.Errorf("%d start-up retries logged; want one per failed attempt (3 refused dials, 2 LOADING)\n%s", n, logs.String())
	}
	t.Logf("%d dials, %d start-up retries logged, %d records handled", dials.Load(), n, sn.distinct())
}

// TestWireVersionAtStart: a wire contract version other than this
// worker's makes Run return an error wrapping ErrWireVersion before it
// reads anything; no version key (an ingest older than the key) is
// version 1's layout and runs.
func TestWireVersionAtStart(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	e.add(t, s, 0, 5)
	vkey := wire.VersionKey(e.prefix)
	t.Cleanup(func() { e.rdb.Del(context.Background(), vkey) })
	for _, v := range []string{"2", "01", "x"} {
		if err := e.rdb.HSet(context.Background(), vkey, wire.FieldVersion, v).Err(); err != nil {
			t.Fatal(err)
		}
		var calls atomic.Int64
		err, took := runFor(t, mustNew(t, e.config(func(context.Context, *Message) error { calls.Add(1); return nil })), 20*time.Second)
		if !errors.Is(err, ErrWireVersion) {
			t.Errorf("version %q: Run = %v; want an error wrapping ErrWireVersion", v, err)
		}
		if calls.Load() != 0 || e.pending(t, s, DefaultGroup) != 0 {
			t.Errorf("version %q: handler ran %d times, %d pending: want nothing read", v, calls.Load(), e.pending(t, s, DefaultGroup))
		}
		t.Logf("version %q: Run returned after %v: %v", v, took.Round(time.Millisecond), err)
	}
	e.rdb.Del(context.Background(), vkey)
	sn := newSeen()
	running(t, mustNew(t, e.config(func(_ context.Context, m *Message) error { sn.add(m); return nil })))
	testenv.Eventually(t, 20*time.Second, func() bool { return sn.distinct() == 5 }, "records not handled without a version key")
}

// TestWireVersionChangesWhileRunning: the version is checked again at each
// discovery, by the library (not only by kbridge worker at start). When a
// newer ingest writes version 2 while handlers run, the worker takes no new
// entries, lets the running handlers finish and acknowledges them, hands
// back what it read but had not started, and Run returns an error wrapping
// ErrWireVersion: nothing is left leased by this worker.
func TestWireVersionChangesWhileRunning(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	const total = 200
	e.add(t, s, 0, total)
	vkey := wire.VersionKey(e.prefix)
	t.Cleanup(func() { e.rdb.Del(context.Background(), vkey) })
	var started, finished atomic.Int64
	release := make(chan struct{})
	cfg := e.config(func(ctx context.Context, m *Message) error {
		started.Add(1)
		defer finished.Add(1)
		<-release
		return nil
	})
	cfg.Concurrency, cfg.ReadAhead = 2, 2
	cfg.VisibilityTimeout = 5 * time.Second
	w := mustNew(t, cfg)
	errc := make(chan error, 1)
	go func() { errc <- w.Run(context.Background()) }()
	testenv.Eventually(t, 20*time.Second, func() bool { return started.Load() == 2 }, "two handlers not started")
	changed := time.Now()
	if err := e.rdb.HSet(context.Background(), vkey, wire.FieldVersion, "2").Err(); err != nil {
		t.Fatal(err)
	}
	// The change is seen at the next discovery (DiscoveryInterval 100ms):
	// let the handlers go well after it.
	testenv.Eventually(t, 20*time.Second, func() bool { return w.sched.isStopped() }, "the worker did not stop reading after the version changed")
	seen := time.Since(changed)
	close(release)
	var err error
	select {
	case err = <-errc:
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after the version changed")
	}
	if !errors.Is(err, ErrWireVersion) {
		t.Errorf("Run = %v; want an error wrapping ErrWireVersion", err)
	}
	if started.Load() != 2 || finished.Load() != 2 {
		t.Errorf("handlers started %d, finished %d; want exactly the 2 running at the change, both finished", started.Load(), finished.Load())
	}
	st := w.Stats()
	if st.Processed != 2 {
		t.Errorf("processed %d; want the 2 in flight at the change", st.Processed)
	}
	ctx := context.Background()
	pend, err2 := e.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: s, Group: DefaultGroup, Start: "-", End: "+", Count: total}).Result()
	if err2 != nil {
		t.Fatal(err2)
	}
	for _, p := range pend {
		if p.Idle < cfg.VisibilityTimeout-time.Second {
			t.Errorf("entry %s left leased by %s (idle %v): want it handed back (idle ≥ the visibility timeout) or acknowledged", p.ID, p.Consumer, p.Idle)
		}
	}
	t.Logf("stop seen %v after the change; Run: %v; handlers started %d finished %d; %d entries handed back", seen.Round(time.Millisecond), err, started.Load(), finished.Load(), len(pend))
}

// isStopped reports whether the scheduler stopped taking entries (Run's
// shutdown began).
func (s *scheduler) isStopped() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopped
}
