package worker

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

// endpoint is a real net/http server on a fixed loopback address that can be
// taken down (connections refused) and brought up again, as a redeploy does.
// It records what it received.
type endpoint struct {
	addr string
	h    http.Handler

	mu   sync.Mutex
	srv  *http.Server
	got  map[string]int // "METHOD path offset body" → count
	reqs []time.Time
}

func newEndpoint(t *testing.T, status func(r *http.Request) int) *endpoint {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &endpoint{addr: ln.Addr().String(), got: map[string]int{}}
	_ = ln.Close()
	e.h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		code := status(r)
		e.mu.Lock()
		e.reqs = append(e.reqs, time.Now())
		if code == http.StatusOK {
			e.got[r.Method+" "+r.URL.Path+" "+r.Header.Get("Kbridge-Offset")+" "+string(b)]++
		}
		e.mu.Unlock()
		w.WriteHeader(code)
	})
	t.Cleanup(e.down)
	return e
}

func (e *endpoint) url() string { return "http://" + e.addr + "/in" }

// up starts serving on the endpoint's address.
func (e *endpoint) up(t *testing.T) {
	t.Helper()
	var ln net.Listener
	testenv.Eventually(t, 5*time.Second, func() bool {
		var err error
		ln, err = net.Listen("tcp", e.addr)
		return err == nil
	}, "cannot listen on %s again", e.addr)
	srv := &http.Server{Handler: e.h}
	e.mu.Lock()
	e.srv = srv
	e.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
}

// down stops the server as a redeploy does: the listener is closed at once
// (connections are refused), the requests in progress finish.
func (e *endpoint) down() {
	e.mu.Lock()
	srv := e.srv
	e.srv = nil
	e.mu.Unlock()
	if srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}
}

func (e *endpoint) received() map[string]int {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make(map[string]int, len(e.got))
	for k, v := range e.got {
		out[k] = v
	}
	return out
}

func dlqLen(t *testing.T, e *env, s string) int64 {
	t.Helper()
	n, err := e.rdb.XLen(context.Background(), wire.DLQKey(s)).Result()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestHTTPRedirectNotFollowed: a POST answered with a redirect is never
// followed (net/http would send a GET without the body to the new address
// for 301/302/303, and a 2xx to it would acknowledge a record never
// delivered): each 3xx is a failed delivery naming the Location. The record
// is either delivered to the real endpoint later (the redirect went away)
// or dead-lettered; the Location gets no request.
func TestHTTPRedirectNotFollowed(t *testing.T) {
	for _, code := range []int{301, 302, 303, 307, 308} {
		for _, mode := range []string{"always", "once"} {
			t.Run(strconv.Itoa(code)+"-"+mode, func(t *testing.T) {
				e := newEnv(t)
				s := e.stream(t, "t", 0)
				e.add(t, s, 0, 1)
				var redirects, atNew atomic.Int64
				mux := http.NewServeMux()
				mux.HandleFunc("/old", func(w http.ResponseWriter, r *http.Request) {
					_, _ = io.Copy(io.Discard, r.Body)
					if mode == "always" || redirects.Load() == 0 {
						redirects.Add(1)
						http.Redirect(w, r, "/new", code)
						return
					}
					w.WriteHeader(http.StatusNoContent) // delivered at last, with its body
				})
				mux.HandleFunc("/new", func(w http.ResponseWriter, r *http.Request) {
					atNew.Add(1) // answers 200 to anything, a GET included
				})
				srv := httptest.NewServer(mux)
				defer srv.Close()
				cfg := e.config(NewHTTPHandler(srv.URL+"/old", 5*time.Second).Handle)
				cfg.MaxDeliveries = 2
				w := mustNew(t, cfg)
				running(t, w)
				testenv.Eventually(t, 10*time.Second, func() bool {
					st := w.Stats()
					return st.DeadLettered+st.Acked == 1 && e.pending(t, s, DefaultGroup) == 0
				}, "entry neither acknowledged nor dead-lettered")
				st := w.Stats()
				t.Logf("%d %s: redirects %d, requests to the Location %d, stats %+v", code, mode, redirects.Load(), atNew.Load(), st)
				if n := atNew.Load(); n != 0 {
					t.Errorf("the redirect target got %d requests, want 0 (redirects are not followed)", n)
				}
				switch mode {
				case "always":
					dls, err := ListDeadLetters(context.Background(), e.rdb, e.prefix, Filter{})
					if err != nil {
						t.Fatal(err)
					}
					if len(dls) != 1 || dls[0].Info.Deliveries != 2 || !strings.Contains(dls[0].Info.Error, "HTTP "+strconv.Itoa(code)+" redirect to /new not followed") {
						t.Errorf("dead letters = %+v; want the record after 2 deliveries, error naming the redirect", dls)
					}
					if st.Processed != 0 || st.Failed != 2 || st.Backoffs != 0 {
						t.Errorf("Stats = %+v; want 0 processed, 2 failed deliveries, no backoffs", st)
					}
				case "once":
					if n := dlqLen(t, e, s); n != 0 {
						t.Errorf("dead letters = %d, want 0", n)
					}
					if st.Processed != 1 || st.Failed != 1 || st.Retries != 1 {
						t.Errorf("Stats = %+v; want 1 failed delivery (the redirect), then processed on the retry", st)
					}
				}
			})
		}
	}
}

// testTransient: an endpoint that answers status (or refuses connections:
// status 0) a few times and then accepts loses nothing and counts no
// delivery (MaxDeliveries 1 would dead-letter at the first counted
// failure).
func testTransient(t *testing.T, status int) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	e.add(t, s, 0, 5)
	const failures = 6 // over all records
	var n atomic.Int64
	ep := newEndpoint(t, func(r *http.Request) int {
		if status != 0 && n.Add(1) <= failures {
			return status
		}
		return http.StatusOK
	})
	cfg := e.config(NewHTTPHandler(ep.url(), 5*time.Second).Handle)
	cfg.MaxDeliveries = 1
	w := mustNew(t, cfg)
	if status == 0 {
		running(t, w)
		// connections refused until enough back-offs happened
		testenv.Eventually(t, 10*time.Second, func() bool { return w.Stats().Backoffs >= failures }, "backoffs %d", w.Stats().Backoffs)
		ep.up(t)
	} else {
		ep.up(t)
		running(t, w)
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return w.Stats().Acked == 5 }, "acked %d of 5", w.Stats().Acked)
	st := w.Stats()
	t.Logf("status %d: stats %+v", status, st)
	if d := dlqLen(t, e, s); d != 0 {
		t.Errorf("dead letters = %d, want 0", d)
	}
	got := ep.received()
	for o := range 5 {
		if k := "POST /in " + strconv.Itoa(o) + " v" + strconv.Itoa(o); got[k] != 1 {
			t.Errorf("%q received %d times, want 1 (all: %v)", k, got[k], got)
		}
	}
	if st.Failed != 0 || st.Backoffs < failures || st.Processed != 5 {
		t.Errorf("Stats = %+v; want 0 failed, at least %d backoffs, 5 processed", st, failures)
	}
}

// TestHTTPRefused: connection refused backs off without counting a
// delivery.
func TestHTTPRefused(t *testing.T) { testTransient(t, 0) }

// TestHTTP502: Bad Gateway backs off like 503.
func TestHTTP502(t *testing.T) { testTransient(t, http.StatusBadGateway) }

// TestHTTP504: Gateway Timeout backs off like 503.
func TestHTTP504(t *testing.T) { testTransient(t, http.StatusGatewayTimeout) }

// TestHTTPTransientKinds: which answers Handle turns into a back-off
// (RetryError) and which into a failed delivery.
func TestHTTPTransientKinds(t *testing.T) {
	for _, tt := range []struct {
		status    int
		transient bool
	}{{429, true}, {502, true}, {503, true}, {504, true}, {500, false}, {400, false}, {404, false}, {301, false}, {307, false}} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if tt.status/100 == 3 {
				w.Header().Set("Location", "/elsewhere")
			}
			w.WriteHeader(tt.status)
		}))
		err := NewHTTPHandler(srv.URL, 5*time.Second).Handle(context.Background(), &Message{Value: []byte("x")})
		srv.Close()
		var re *RetryError
		var he *HTTPError
		if errors.As(err, &re) != tt.transient || !errors.As(err, &he) || he.StatusCode != tt.status {
			t.Errorf("HTTP %d: Handle = %v; want an *HTTPError, transient (RetryError) %v", tt.status, err, tt.transient)
		}
	}
	// a port nobody listens on
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	err = NewHTTPHandler("http://"+addr, 5*time.Second).Handle(context.Background(), &Message{Value: []byte("x")})
	var re *RetryError
	if !errors.As(err, &re) || !strings.Contains(err.Error(), "refused") {
		t.Errorf("connection refused: Handle = %v, want a RetryError", err)
	}
	// A caller's client that follows redirects does not make the handler follow them.
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/new" {
			hits.Add(1)
			return
		}
		http.Redirect(w, r, "/new", http.StatusFound)
	}))
	defer srv.Close()
	h := &HTTPHandler{URL: srv.URL, Client: &http.Client{}}
	if err := h.Handle(context.Background(), &Message{Value: []byte("x")}); err == nil || hits.Load() != 0 {
		t.Errorf("with a caller's client: Handle = %v, redirect target hit %d times; want an error and 0", err, hits.Load())
	}
}

// TestHTTPRetryAfterDate: a 503 whose Retry-After is an HTTP date is retried
// no earlier than that date, without counting a delivery.
func TestHTTPRetryAfterDate(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	e.add(t, s, 0, 1)
	var mu sync.Mutex
	var date time.Time
	var retriedAt time.Time
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if date.IsZero() {
			date = time.Now().Add(2 * time.Second).Truncate(time.Second) // 1 to 2 s ahead
			w.Header().Set("Retry-After", date.UTC().Format(http.TimeFormat))
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		if retriedAt.IsZero() {
			retriedAt = time.Now()
		}
	}))
	defer srv.Close()
	cfg := e.config(NewHTTPHandler(srv.URL, 5*time.Second).Handle)
	cfg.MaxDeliveries = 1
	w := mustNew(t, cfg)
	running(t, w)
	testenv.Eventually(t, 10*time.Second, func() bool { return w.Stats().Acked == 1 }, "entry not acknowledged")
	mu.Lock()
	defer mu.Unlock()
	t.Logf("Retry-After %s; retried %v after it", date.UTC().Format(http.TimeFormat), retriedAt.Sub(date))
	if retriedAt.Before(date) {
		t.Errorf("retried at %v, before the Retry-After date %v", retriedAt, date)
	}
	if st := w.Stats(); st.Processed != 1 || st.Backoffs != 1 || st.Failed != 0 || dlqLen(t, e, s) != 0 {
		t.Errorf("Stats = %+v; want 1 backoff, then processed, nothing dead-lettered", st)
	}
}

func TestRetryAfterHeader(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		v    string
		want time.Duration
	}{
		{"", 0},
		{"3", 3 * time.Second},
		{" 3 ", 3 * time.Second},
		{"0", 0},
		{"-5", 0},
		{"junk", 0},
		{"99999", maxRetryAfter},
		{"99999999999999999999", 0}, // not a number Go can hold, not a date
		{"Sun, 01 Mar 2026 12:00:07 GMT", 7 * time.Second},  // IMF-fixdate
		{"Sunday, 01-Mar-26 12:00:07 GMT", 7 * time.Second}, // RFC 850
		{"Sun Mar  1 12:00:07 2026", 7 * time.Second},       // asctime
		{"Sun, 01 Mar 2026 11:59:00 GMT", 0},                // in the past
		{"Mon, 02 Mar 2026 12:00:00 GMT", maxRetryAfter},
	} {
		if got := retryAfterAt(tt.v, now); got != tt.want {
			t.Errorf("retryAfter(%q) = %v, want %v", tt.v, got, tt.want)
		}
	}
}

// TestHTTPRedeploy: the endpoint goes away (connections refused) for many
// times the backoff, as in a redeploy, while records keep coming, then comes
// back: every record is delivered once and nothing is dead-lettered, with
// MaxDeliveries 3. (A request sent on a kept-alive connection at the moment
// the server closes it fails after it was sent, and counts a delivery: the
// worker cannot know the server did not process it. Hence 3, not 1.)
func TestHTTPRedeploy(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	ep := newEndpoint(t, func(*http.Request) int { return http.StatusOK })
	ep.up(t)
	cfg := e.config(NewHTTPHandler(ep.url(), 5*time.Second).Handle)
	cfg.MaxDeliveries = 3
	cfg.Concurrency = 4
	cfg.BackoffMax = 200 * time.Millisecond
	w := mustNew(t, cfg)
	running(t, w)
	e.add(t, s, 0, 20)
	testenv.Eventually(t, 10*time.Second, func() bool { return len(ep.received()) == 20 }, "first 20 not delivered")
	ep.down()
	e.add(t, s, 20, 20)
	downSince := time.Now()
	// down for at least 10 × BackoffMax: 3 counted deliveries would have dead-lettered
	testenv.Eventually(t, 20*time.Second, func() bool {
		return time.Since(downSince) > 10*cfg.BackoffMax && w.Stats().Backoffs >= 20
	}, "backoffs %d", w.Stats().Backoffs)
	ep.up(t)
	testenv.Eventually(t, 20*time.Second, func() bool { return e.pending(t, s, DefaultGroup) == 0 && len(ep.received()) == 40 }, "records not all delivered")
	st := w.Stats()
	t.Logf("down %v; stats %+v", time.Since(downSince), st)
	if d := dlqLen(t, e, s); d != 0 {
		t.Errorf("dead letters = %d, want 0", d)
	}
	for k, n := range ep.received() {
		if n != 1 {
			t.Errorf("%q delivered %d times, want 1", k, n)
		}
	}
	if st.Failed > int64(cfg.Concurrency) {
		t.Errorf("Stats.Failed = %d; want at most %d (requests cut off as the server went down), the refusals counted none", st.Failed, cfg.Concurrency)
	}
}

// TestHTTPDeadEndpoint: an endpoint that never comes back still has its
// records dead-lettered: after MaxTransientTime the refusals count as
// deliveries.
func TestHTTPDeadEndpoint(t *testing.T) {
	e := newEnv(t)
	s := e.stream(t, "t", 0)
	e.add(t, s, 0, 3)
	ep := newEndpoint(t, func(*http.Request) int { return http.StatusOK }) // never up
	cfg := e.config(NewHTTPHandler(ep.url(), 5*time.Second).Handle)
	cfg.MaxDeliveries = 2
	cfg.MaxTransientTime = 300 * time.Millisecond
	w := mustNew(t, cfg)
	start := time.Now()
	running(t, w)
	testenv.Eventually(t, 20*time.Second, func() bool { return dlqLen(t, e, s) == 3 && e.pending(t, s, DefaultGroup) == 0 }, "dead letters %d", dlqLen(t, e, s))
	st := w.Stats()
	t.Logf("dead-lettered after %v; stats %+v", time.Since(start), st)
	if took := time.Since(start); took < cfg.MaxTransientTime {
		t.Errorf("dead-lettered after %v, before the max transient time %v", took, cfg.MaxTransientTime)
	}
	dls, _ := ListDeadLetters(context.Background(), e.rdb, e.prefix, Filter{})
	for _, d := range dls {
		if d.Info.Deliveries != 2 || !strings.Contains(d.Info.Error, "refused") {
			t.Errorf("dead letter %+v: want 2 deliveries and the connection error", d.Info)
		}
	}
}

// TestHTTPErrorMessage: only 301/302/303 are said to lose the body when
// followed (a client re-sends them as a GET); 307/308 keep it; 300 and 304
// are not redirects at all, only not a success.
func TestHTTPErrorMessage(t *testing.T) {
	for _, tt := range []struct {
		err       HTTPError
		want, not string
	}{
		{HTTPError{StatusCode: 302, Location: "/new"}, "HTTP 302 redirect to /new not followed (a client following it would send the POST again as a GET", ""},
		{HTTPError{StatusCode: 303, Location: "(none)"}, "redirect to (none) not followed", ""},
		{HTTPError{StatusCode: 307, Location: "/new"}, "HTTP 307 redirect to /new not followed: point the URL", "GET"},
		{HTTPError{StatusCode: 308, Location: "/new", Body: "moved"}, "not followed: point the URL at the final address: moved", "GET"},
		{HTTPError{StatusCode: 300, Location: "/x"}, "HTTP 300 is not a success (only 2xx is); Location /x", "redirect"},
		{HTTPError{StatusCode: 304, Location: "(none)"}, "HTTP 304 is not a success (only 2xx is)", "Location"},
		{HTTPError{StatusCode: 500, Body: "boom"}, "HTTP 500: boom", "success"},
	} {
		t.Run(strconv.Itoa(tt.err.StatusCode), func(t *testing.T) {
			got := tt.err.Error()
			if !strings.Contains(got, tt.want) || (tt.not != "" && strings.Contains(got, tt.not)) {
				t.Errorf("Error() = %q; want it to contain %q and not %q", got, tt.want, tt.not)
			}
		})
	}
}
