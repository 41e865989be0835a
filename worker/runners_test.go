package worker

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

// TestExecHandler: the command gets the value on stdin and the rest in the
// environment; exit 0 acknowledges; a failing exit is retried, and
// dead-lettered with its exit code and stderr after MaxDeliveries.
func TestExecHandler(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	e.add(t, s, 0, 6)
	dir := t.TempDir()
	// offset 3 fails on its first delivery, offset 5 always.
	script := `set -e
v=$(cat)
if [ "$KBRIDGE_OFFSET" = 5 ]; then echo "cannot do 5" >&2; exit 3; fi
if [ "$KBRIDGE_OFFSET" = 3 ] && [ "$KBRIDGE_DELIVERIES" = 1 ]; then exit 1; fi
echo "$KBRIDGE_TOPIC $KBRIDGE_PARTITION $KBRIDGE_OFFSET $KBRIDGE_KEY $v $KBRIDGE_DELIVERIES" > "` + dir + `/$KBRIDGE_OFFSET"
`
	h := &ExecHandler{Command: script, Timeout: 10 * time.Second}
	cfg := e.config(h.Handle)
	cfg.MaxDeliveries = 2
	w := mustNew(t, cfg)
	running(t, w)
	testenv.Eventually(t, 20*time.Second, func() bool {
		n, _ := e.rdb.XLen(context.Background(), wire.DLQKey(s)).Result()
		return n == 1 && e.pending(t, s, DefaultGroup) == 0
	}, "want 1 dead letter and nothing pending")
	for o, want := range map[string]string{"0": "t 0 0 k0 v0 1", "3": "t 0 3 k3 v3 2", "4": "t 0 4 k4 v4 1"} {
		b, err := os.ReadFile(filepath.Join(dir, o))
		if err != nil || strings.TrimSpace(string(b)) != want {
			t.Errorf("offset %s wrote %q, %v; want %q", o, b, err, want)
		}
	}
	dls, _ := ListDeadLetters(context.Background(), e.rdb, e.prefix, Filter{})
	if len(dls) != 1 || dls[0].Offset != 5 || !strings.Contains(dls[0].Info.Error, "exit code 3") || !strings.Contains(dls[0].Info.Error, "cannot do 5") {
		t.Errorf("dead letters = %+v; want offset 5 with exit code 3 and its stderr", dls)
	}
}

// TestExecTimeout: a command that outlives the handler timeout is killed
// (with its children) and counts as failed.
func TestExecTimeout(t *testing.T) {
	h := &ExecHandler{Command: "sleep 30 | cat", Timeout: 100 * time.Millisecond}
	start := time.Now()
	err := h.Handle(context.Background(), &Message{Value: []byte("x")})
	var ee *ExecError
	if !asExecError(err, &ee) || ee.ExitCode != -1 {
		t.Fatalf("Handle = %v, want an *ExecError with exit code -1", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Handle took %v; the timeout is 100ms", took)
	}
}

// TestExecKillAll: KillAll kills the commands running, children included
// (they run in process groups of their own, so they would outlive the
// worker's exit), before their side effect; and a command started after it
// is killed at once.
func TestExecKillAll(t *testing.T) {
	dir := t.TempDir()
	h := &ExecHandler{Command: `echo $$ > "` + dir + `/pgid.tmp" && mv "` + dir + `/pgid.tmp" "` + dir + `/pgid"; (sleep 5; touch "` + dir + `/done") & wait`}
	errc := make(chan error, 1)
	go func() { errc <- h.Handle(context.Background(), &Message{Value: []byte("x")}) }()
	var pgid int
	testenv.Eventually(t, 5*time.Second, func() bool {
		b, err := os.ReadFile(filepath.Join(dir, "pgid"))
		if err != nil {
			return false
		}
		pgid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	}, "the command did not start")
	start := time.Now()
	h.KillAll()
	select {
	case err := <-errc:
		if err == nil {
			t.Error("Handle = nil for a killed command, want an error")
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Handle still running 3s after KillAll")
	}
	// The whole process group is gone (the background subshell included),
	// so nothing can create the file any more.
	testenv.Eventually(t, 3*time.Second, func() bool {
		return syscall.Kill(-pgid, 0) == syscall.ESRCH
	}, "process group %d still has processes after KillAll", pgid)
	if _, err := os.Stat(filepath.Join(dir, "done")); !os.IsNotExist(err) {
		t.Errorf("the killed command did its side effect: %v", err)
	}
	if err := h.Handle(context.Background(), &Message{}); err == nil || time.Since(start) > 3*time.Second {
		t.Errorf("a command started after KillAll: Handle = %v after %v; want it killed at once", err, time.Since(start))
	}
}

// TestExecBackgroundChild: a command that exits while a process it started
// in the background still holds its output succeeds if it exited 0 (Wait
// gives up on the pipes after WaitDelay), and fails with its exit code
// otherwise.
func TestExecBackgroundChild(t *testing.T) {
	for _, tt := range []struct {
		name     string
		command  string
		wantCode int // 0: success
	}{
		{"exit 0", "echo hi; (sleep 3) & exit 0", 0},
		{"exit 4", "echo hi; (sleep 3) & exit 4", 4},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := &ExecHandler{Command: tt.command}
			err := h.Handle(context.Background(), &Message{Value: []byte("x")})
			var ee *ExecError
			switch {
			case tt.wantCode == 0 && err != nil:
				t.Errorf("Handle = %v, want success", err)
			case tt.wantCode != 0 && (!asExecError(err, &ee) || ee.ExitCode != tt.wantCode):
				t.Errorf("Handle = %v, want an *ExecError with exit code %d", err, tt.wantCode)
			}
		})
	}
}

// TestExecEnvNoSecrets: the command does not inherit the worker's KBRIDGE_
// variables (secrets among them); it gets the record's, and the rest of the
// environment.
func TestExecEnvNoSecrets(t *testing.T) {
	t.Setenv("KBRIDGE_REDIS_URL", "redis://:s3cret@redis:6379/0")
	t.Setenv("KBRIDGE_KAFKA_PASSWORD", "s3cret")
	t.Setenv("KBRIDGE_KEY", "stale") // the record's key is null: must not show through
	t.Setenv("KBRIDGE_TEST_OTHER_VAR", "")
	t.Setenv("OTHER_VAR_FOR_TEST", "kept")
	var out []byte
	h := &ExecHandler{Command: "env", Stdout: func(_ *Message, b []byte) { out = append(out, b...) }}
	if err := h.Handle(context.Background(), &Message{Topic: "t", Offset: 7, Value: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	env := string(out)
	for _, bad := range []string{"s3cret", "KBRIDGE_REDIS_URL", "KBRIDGE_KAFKA_PASSWORD", "KBRIDGE_KEY=", "KBRIDGE_TEST_OTHER_VAR"} {
		if strings.Contains(env, bad) {
			t.Errorf("command environment contains %q:\n%s", bad, env)
		}
	}
	for _, want := range []string{"OTHER_VAR_FOR_TEST=kept", "KBRIDGE_OFFSET=7", "KBRIDGE_KEY_NULL=1"} {
		if !strings.Contains(env, want) {
			t.Errorf("command environment lacks %q:\n%s", want, env)
		}
	}
}

// TestHTTPHandlerReusesConnections: NewHTTPHandler's client keeps enough
// idle connections for a worker's concurrent handlers: 16 handlers making
// 50 requests each open about 16 connections, not one per request or so
// (net/http keeps 2 idle per host by default).
func TestHTTPHandlerReusesConnections(t *testing.T) {
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		time.Sleep(time.Millisecond)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	h := NewHTTPHandler(srv.URL, 5*time.Second)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				if err := h.Handle(context.Background(), &Message{Value: []byte("x")}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if n := conns.Load(); n > 24 {
		t.Errorf("%d connections for 16 handlers × 50 requests, want at most 24", n)
	}
}

func asExecError(err error, target **ExecError) bool {
	e, ok := err.(*ExecError)
	if ok {
		*target = e
	}
	return ok
}

// TestHTTPHandler: the value is POSTed with the record's metadata in
// headers; 2xx acknowledges; 503 (and 429) back off, honouring Retry-After,
// without counting a delivery; 500 fails, and after MaxDeliveries the record
// is dead-lettered with the status and body.
func TestHTTPHandler(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	e.add(t, s, 0, 5)
	var mu sync.Mutex
	bodies := map[string]string{}
	var busy atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		off := r.Header.Get("Kbridge-Offset")
		switch {
		case off == "1" && busy.Add(1) <= 2:
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		case off == "2":
			http.Error(w, "no such customer", http.StatusInternalServerError)
			return
		}
		mu.Lock()
		bodies[off] = string(b) + " " + r.Header.Get("Kbridge-Topic") + " " + r.Header.Get("Kbridge-Key") + " " + r.Header.Get("Kbridge-Deliveries")
		mu.Unlock()
	}))
	defer srv.Close()
	cfg := e.config(NewHTTPHandler(srv.URL, 5*time.Second).Handle)
	cfg.MaxDeliveries = 3
	w := mustNew(t, cfg)
	running(t, w)
	testenv.Eventually(t, 10*time.Second, func() bool {
		n, _ := e.rdb.XLen(context.Background(), wire.DLQKey(s)).Result()
		return n == 1 && e.pending(t, s, DefaultGroup) == 0
	}, "want 1 dead letter and nothing pending")
	mu.Lock()
	if len(bodies) != 4 || bodies["0"] != "v0 t azA= 1" || bodies["1"] != "v1 t azE= 1" {
		t.Errorf("received %q; want 4 records, offset 1 after two 503s still on delivery 1", bodies)
	}
	mu.Unlock()
	dls, _ := ListDeadLetters(context.Background(), e.rdb, e.prefix, Filter{})
	if len(dls) != 1 || dls[0].Offset != 2 || dls[0].Info.Deliveries != 3 || !strings.Contains(dls[0].Info.Error, "HTTP 500: no such customer") {
		t.Errorf("dead letters = %+v; want offset 2 after 3 deliveries with HTTP 500", dls)
	}
	if st := w.Stats(); st.Backoffs != 2 {
		t.Errorf("Stats.Backoffs = %d, want 2", st.Backoffs)
	}
}
