package worker

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kbridge/kbridge/internal/wire"
)

// HTTPHandler POSTs each message to URL: the value as the body, the rest in
// headers (see Handle). A 2xx answer means done. The endpoint being
// unavailable — 429, 502, 503, 504, or no connection at all (refused, DNS,
// connect timeout: nothing was sent) — means "back off and retry" without
// counting a delivery (RetryAfter; Retry-After is honoured, in seconds or as
// an HTTP date), within Config.MaxTransientTime. Anything else is a failure
// (retried, then dead-lettered): other statuses, a request cut off after it
// was sent, and redirects.
//
// Redirects are never followed: net/http turns a POST answered with 301, 302
// or 303 into a GET without the body, and a 2xx to that GET would acknowledge
// a record that was never delivered. A 3xx is a failed delivery whose error
// names the Location; point URL at the final address.
type HTTPHandler struct {
	URL string
	// Client sends the requests; nil: a client with Timeout, keeping up to
	// 64 idle connections to the endpoint. Whatever its CheckRedirect, the
	// handler does not follow redirects (it uses a copy of Client that
	// returns them).
	Client *http.Client
	// Timeout bounds one request when Client is nil. Default 30s.
	Timeout time.Duration
	// Header is added to every request (e.g. Authorization).
	Header http.Header

	once   sync.Once
	client *http.Client // Client (or the default), not following redirects
}

// maxIdlePerHost is how many idle connections HTTPHandler keeps to its
// endpoint: enough for the worker's handlers (Config.Concurrency, 16 by
// default) to reuse theirs. net/http's default of 2 would close and dial
// again almost every connection under concurrency.
const maxIdlePerHost = 64

// httpTransport is the transport of HTTPHandler's default clients.
var httpTransport = func() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = max(t.MaxIdleConns, maxIdlePerHost)
	t.MaxIdleConnsPerHost = maxIdlePerHost
	return t
}()

// NewHTTPHandler returns an HTTPHandler for url with the given timeout. Its
// client keeps up to 64 idle connections to the endpoint.
func NewHTTPHandler(url string, timeout time.Duration) *HTTPHandler {
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	return &HTTPHandler{URL: url, Timeout: timeout, Client: &http.Client{Timeout: timeout, Transport: httpTransport}}
}

// noRedirect makes a client return a redirect response as it is.
func noRedirect(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// httpClient returns the client Handle uses: a copy of Client (or a default
// one) that does not follow redirects.
func (h *HTTPHandler) httpClient() *http.Client {
	h.once.Do(func() {
		if h.Client != nil {
			c := *h.Client
			h.client = &c
		} else {
			h.client = &http.Client{Timeout: cmpOr(h.Timeout, 30*time.Second), Transport: httpTransport}
		}
		h.client.CheckRedirect = noRedirect
	})
	return h.client
}

// Handle POSTs m. It is a Handler; safe for concurrent use (do not change the
// fields after the first call). Request headers:
//
//	Content-Type: application/octet-stream
//	Kbridge-Topic, Kbridge-Partition, Kbridge-Offset
//	Kbridge-Timestamp     Kafka record time, Unix milliseconds
//	Kbridge-Key           the key, base64 (absent if null)
//	Kbridge-Value-Null    "1" for a null value (tombstone; empty body)
//	Kbridge-Headers       the record headers as on the wire (JSON, values base64)
//	Kbridge-Deliveries    this delivery's number, from 1
//	Kbridge-Stream, Kbridge-Id   where the entry is in Redis
//	Kbridge-Replayed      "1" for a replayed dead letter
func (h *HTTPHandler) Handle(ctx context.Context, m *Message) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.URL, bytes.NewReader(m.Value))
	if err != nil {
		return Permanent(err)
	}
	for k, vs := range h.Header {
		req.Header[k] = vs
	}
	hd := req.Header
	hd.Set("Content-Type", "application/octet-stream")
	hd.Set("Kbridge-Topic", m.Topic)
	hd.Set("Kbridge-Partition", strconv.Itoa(m.Partition))
	hd.Set("Kbridge-Offset", strconv.FormatInt(m.Offset, 10))
	hd.Set("Kbridge-Timestamp", strconv.FormatInt(m.Time.UnixMilli(), 10))
	hd.Set("Kbridge-Deliveries", strconv.FormatInt(m.Deliveries, 10))
	hd.Set("Kbridge-Stream", m.Stream)
	hd.Set("Kbridge-Id", m.ID)
	if m.Key != nil {
		hd.Set("Kbridge-Key", base64.StdEncoding.EncodeToString(m.Key))
	}
	if m.Value == nil {
		hd.Set("Kbridge-Value-Null", "1")
	}
	if s, ok := m.fields[wire.FieldHeaders].(string); ok {
		hd.Set("Kbridge-Headers", s)
	}
	if m.Replayed {
		hd.Set("Kbridge-Replayed", "1")
	}
	var tr sendTrace
	req = req.WithContext(httptrace.WithClientTrace(ctx, tr.trace()))
	resp, err := h.httpClient().Do(req)
	if err != nil {
		if tr.notSent(err) && ctx.Err() == nil {
			return RetryAfter(0, err)
		}
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return nil
	}
	herr := &HTTPError{StatusCode: resp.StatusCode, Body: strings.TrimSpace(string(body))}
	if resp.StatusCode >= 300 && resp.StatusCode < 400 {
		herr.Location = resp.Header.Get("Location")
		if herr.Location == "" {
			herr.Location = "(none)"
		}
	}
	switch resp.StatusCode {
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return RetryAfter(retryAfter(resp.Header.Get("Retry-After")), herr)
	}
	return herr
}

// sendTrace records how far a request got (net/http/httptrace), to tell a
// request that failed before anything was sent from one that may have
// reached the endpoint.
type sendTrace struct {
	traced       atomic.Bool // the transport reports to the trace (http.Transport does)
	wroteHeaders atomic.Bool
}

func (t *sendTrace) trace() *httptrace.ClientTrace {
	return &httptrace.ClientTrace{
		GetConn:      func(string) { t.traced.Store(true) },
		WroteHeaders: func() { t.wroteHeaders.Store(true) },
	}
}

// notSent reports whether a request failed before anything was sent: no
// connection could be made (refused, no route, DNS, a connect that timed
// out — net/http then reports its own timeout, not the dial's error), or
// it broke before the request's headers were written. The endpoint is
// unavailable, the record not at fault, and nothing was delivered twice.
// Once the headers are written the endpoint may have acted on the request:
// a failure then counts a delivery. With a transport that does not report
// to httptrace, only a dial error is taken as "not sent".
func (t *sendTrace) notSent(err error) bool {
	if t.traced.Load() {
		return !t.wroteHeaders.Load()
	}
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// maxRetryAfter caps the wait a Retry-After header may ask for.
const maxRetryAfter = 5 * time.Minute

// retryAfter parses a Retry-After header, delta-seconds or an HTTP date (RFC
// 9110 10.2.3, in any of the three formats http.ParseTime accepts), as the
// wait from now; 0 if absent, unparsable or in the past (the worker's own
// backoff then applies). It is capped at 5 minutes.
func retryAfter(v string) time.Duration { return retryAfterAt(v, time.Now()) }

func retryAfterAt(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	var d time.Duration
	if s, err := strconv.ParseInt(v, 10, 64); err == nil {
		d = time.Duration(min(max(s, 0), int64(maxRetryAfter/time.Second))) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	}
	return min(max(d, 0), maxRetryAfter)
}

func cmpOr(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}
