package worker

import (
	"errors"
	"fmt"
	"time"

	"github.com/kbridge/kbridge/internal/wire"
)

// ErrRunning is returned by Run when the Worker is already running (or has
// run: a Worker runs once).
var ErrRunning = errors.New("worker: Run called twice")

// ErrShutdownTimeout is returned (wrapped) by Run when handlers were still
// running at the end of Config.ShutdownTimeout. Their entries stay pending
// and are reclaimed by other workers after the visibility timeout.
var ErrShutdownTimeout = errors.New("worker: handlers still running after the shutdown timeout")

// ErrWireVersion is returned (wrapped) by Run when the wire contract
// version under the prefix (docs/wire.md) is not the one this worker
// speaks: at start, before anything is read, or at a discovery while it
// runs (a newer ingest was deployed), after the shutdown that follows.
// It is the same error value as the ingest's check returns.
var ErrWireVersion = wire.ErrVersion

// AuthError is returned by Run when Redis refused the worker at start: the
// credentials (WRONGPASS, NOAUTH), a command or key the ACL user may not
// use (NOPERM; each refused command is named), or TLS (a certificate that
// does not verify, a client certificate the server wants). Nothing was
// read. No retry can fix it, so Run does not retry.
type AuthError struct {
	// Hint names what to check (the flags that set it), for the message.
	Hint string
	Err  error
}

func (e *AuthError) Error() string {
	s := "redis refused the worker: " + e.Err.Error()
	if e.Hint != "" {
		s += " (" + e.Hint + ")"
	}
	return s
}

func (e *AuthError) Unwrap() error { return e.Err }

// ErrNotFound is returned by the dead-letter functions for a reference that
// names no dead letter.
var ErrNotFound = errors.New("worker: no such dead letter")

// PanicError is the error a panicking handler is treated as having returned.
// It counts as a failure like any other.
type PanicError struct {
	Value any    // what the handler panicked with
	Stack []byte // the goroutine's stack at the panic
}

func (e *PanicError) Error() string { return fmt.Sprintf("handler panicked: %v", e.Value) }

// RetryError asks the worker to back off and try again without counting a
// failed delivery: the downstream is overloaded or unavailable (HTTP 429,
// 502, 503, 504, connection refused), not the record broken. The worker also
// stops reading new entries for After. Deliveries stay uncounted for at most
// Config.MaxTransientTime per entry; after that a RetryError counts like any
// failure. Create it with RetryAfter.
type RetryError struct {
	After time.Duration // 0: the worker's exponential backoff
	Err   error
}

func (e *RetryError) Error() string {
	if e.After > 0 {
		return fmt.Sprintf("retry after %v: %v", e.After, e.Err)
	}
	return fmt.Sprintf("retry later: %v", e.Err)
}

func (e *RetryError) Unwrap() error { return e.Err }

// RetryAfter returns an error that makes the worker back off for d (0: its
// exponential backoff) and run the handler again, without counting a
// delivery toward Config.MaxDeliveries (within Config.MaxTransientTime).
func RetryAfter(d time.Duration, err error) error { return &RetryError{After: d, Err: err} }

// PermanentError marks a failure that no retry can fix: the worker
// dead-letters the entry at once (reason "rejected"). Create it with
// Permanent.
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return "permanent failure: " + e.Err.Error() }

func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent wraps err so that the worker dead-letters the entry at once
// instead of retrying it.
func Permanent(err error) error { return &PermanentError{Err: err} }

// ExecError is the failure of a command run by ExecHandler.
type ExecError struct {
	ExitCode int    // -1 when the command did not exit (killed, not started)
	Stderr   string // the end of its standard error
	Err      error
}

func (e *ExecError) Error() string {
	msg := fmt.Sprintf("command failed (exit code %d): %v", e.ExitCode, e.Err)
	if e.Stderr != "" {
		msg += ": " + e.Stderr
	}
	return msg
}

func (e *ExecError) Unwrap() error { return e.Err }

// HTTPError is a non-2xx answer to HTTPHandler's POST.
type HTTPError struct {
	StatusCode int
	Body       string // the start of the response body
	// Location is the Location header of a 3xx answer, which HTTPHandler
	// does not follow; "(none)" if the answer had none.
	Location string
}

func (e *HTTPError) Error() string {
	msg := fmt.Sprintf("HTTP %d", e.StatusCode)
	switch e.StatusCode {
	case 301, 302, 303:
		msg += fmt.Sprintf(" redirect to %s not followed (a client following it would send the POST again as a GET without its body): point the URL at the final address", e.Location)
	case 307, 308:
		msg += fmt.Sprintf(" redirect to %s not followed: point the URL at the final address", e.Location)
	default:
		if e.StatusCode >= 300 && e.StatusCode < 400 {
			msg += " is not a success (only 2xx is)"
			if e.Location != "" && e.Location != "(none)" {
				msg += fmt.Sprintf("; Location %s", e.Location)
			}
		}
	}
	if e.Body != "" {
		msg += ": " + e.Body
	}
	return msg
}
