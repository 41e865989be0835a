package worker

import (
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/kbridge/kbridge/internal/wire"
)

// HTTPHandler POSTs each message to URL: the value as the body, the rest in
// headers (see Handle). A 2xx answer means done; 429 and 503 mean "back off
// and retry" (Retry-After is honoured; no delivery is counted, and the worker
// reads nothing new meanwhile); anything else, or no answer, is a failure
// (retried, then dead-lettered).
type HTTPHandler struct {
	URL string
	// Client sends the requests; nil: a client with Timeout, keeping up to
	// 64 idle connections to the endpoint.
	Client *http.Client
	// Timeout bounds one request when Client is nil. Default 30s.
	Timeout time.Duration
	// Header is added to every request (e.g. Authorization).
	Header http.Header
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

// Handle POSTs m. It is a Handler. Request headers:
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
	client := h.Client
	if client == nil {
		client = &http.Client{Timeout: cmpOr(h.Timeout, 30*time.Second), Transport: httpTransport}
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return nil
	}
	herr := &HTTPError{StatusCode: resp.StatusCode, Body: strings.TrimSpace(string(body))}
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		return RetryAfter(retryAfter(resp.Header.Get("Retry-After")), herr)
	}
	return herr
}

// retryAfter parses a Retry-After header (seconds or an HTTP date); 0 if
// absent or unparsable. It is capped at 5 minutes.
func retryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	var d time.Duration
	if s, err := strconv.Atoi(v); err == nil && s >= 0 {
		d = time.Duration(s) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = time.Until(t)
	}
	return min(max(d, 0), 5*time.Minute)
}

func cmpOr(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}
