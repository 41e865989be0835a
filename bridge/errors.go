package bridge

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"
)

// ErrEvictionPolicy is returned by Run when Redis may evict keys
// (maxmemory-policy is not noeviction) and Config.AllowEviction is false: an
// evicted stream would lose records that were never processed.
var ErrEvictionPolicy = errors.New("redis maxmemory-policy is not noeviction")

// ErrClosed is returned by Run when it is called a second time.
var ErrClosed = errors.New("bridge: ingest already ran")

// ConfigError lists every problem of a Config.
type ConfigError struct {
	Problems []string
}

func (e *ConfigError) Error() string {
	if len(e.Problems) == 1 {
		return "invalid configuration: " + e.Problems[0]
	}
	s := "invalid configuration:"
	for _, p := range e.Problems {
		s += "\n  - " + p
	}
	return s
}

// CommitError is a failed Kafka offset commit. Nothing is trimmed after it;
// the next interval commits again.
type CommitError struct {
	Offsets map[string]map[int]int64
	Err     error
}

func (e *CommitError) Error() string {
	return fmt.Sprintf("commit %v: %v", e.Offsets, e.Err)
}

func (e *CommitError) Unwrap() error { return e.Err }

// AuthError is returned by Run when Kafka or Redis refused kbridge's
// credentials or permissions at start: a wrong password or user, a SASL
// mechanism the listener does not offer, a TLS certificate that does not
// verify (either way), a Redis ACL user that may not run a command the
// ingest needs, a Kafka group the user may not use. Retrying cannot help, so
// Run returns it before joining the consumer group: nothing was committed.
type AuthError struct {
	// Service is "kafka" or "redis".
	Service string
	// Hint names what to check (the flags that set it), for the message.
	Hint string
	Err  error
}

func (e *AuthError) Error() string {
	s := e.Service + " refused kbridge: " + e.Err.Error()
	if e.Hint != "" {
		s += " (" + e.Hint + ")"
	}
	return s
}

func (e *AuthError) Unwrap() error { return e.Err }

// StartupError is returned by Run when Kafka or Redis stayed unreachable
// for Config.StartupTimeout at start, before the ingest joined its group.
type StartupError struct {
	// Service is "kafka" or "redis".
	Service string
	Timeout time.Duration
	// Err is the last error seen.
	Err error
}

func (e *StartupError) Error() string {
	return fmt.Sprintf("%s still unreachable after %v at start (--startup-timeout): %v", e.Service, e.Timeout, e.Err)
}

func (e *StartupError) Unwrap() error { return e.Err }

// tlsFailure reports whether err is a TLS handshake failure that retrying
// cannot fix: a certificate that does not verify (unknown authority, wrong
// host name, expired), an alert from the server (it wants a client
// certificate, or refused ours), or TLS spoken to a server that does not
// speak it. A server that is merely down is not one of them.
func tlsFailure(err error) bool {
	var (
		unknown  x509.UnknownAuthorityError
		host     x509.HostnameError
		invalid  x509.CertificateInvalidError
		verify   *tls.CertificateVerificationError
		header   tls.RecordHeaderError
		opErr    *net.OpError
		alertErr tls.AlertError
	)
	switch {
	case errors.As(err, &unknown), errors.As(err, &host), errors.As(err, &invalid),
		errors.As(err, &verify), errors.As(err, &header), errors.As(err, &alertErr):
		return true
	case errors.As(err, &opErr) && opErr.Op == "remote error":
		// crypto/tls reports an alert the server sent this way
		// ("remote error: tls: certificate required").
		return true
	}
	// Some libraries flatten the error chain into a string.
	s := err.Error()
	return strings.Contains(s, "x509: ") || strings.Contains(s, "remote error: tls: ")
}

// redisAuthFailure reports whether a Redis error is a refusal of kbridge's
// credentials or permissions: WRONGPASS, NOAUTH, NOPERM, or the ACL error a
// script gets for a command its user may not run.
func redisAuthFailure(err error) bool {
	if err == nil {
		return false
	}
	for _, p := range []string{"WRONGPASS", "NOAUTH", "NOPERM"} {
		if redis.HasErrorPrefix(err, p) {
			return true
		}
	}
	var re redis.Error
	return errors.As(err, &re) && (strings.Contains(err.Error(), "can't run this command") ||
		strings.Contains(err.Error(), "No permissions to access"))
}

// kafkaAuthFailure reports whether a Kafka error is a refusal of kbridge's
// credentials, or of its permission to use the consumer group or the
// cluster. A topic the user may not read is not one of them: the ingest
// bridges the others (see topics.go).
func kafkaAuthFailure(err error) bool {
	for _, e := range []kafka.Error{kafka.SASLAuthenticationFailed, kafka.UnsupportedSASLMechanism,
		kafka.IllegalSASLState, kafka.GroupAuthorizationFailed, kafka.ClusterAuthorizationFailed} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// redisAuthError wraps a Redis refusal with what to check.
func redisAuthError(err error) *AuthError {
	hint := "check the user and password of --redis-url / --redis-password-file"
	switch {
	case tlsFailure(err):
		hint = "check --redis-tls-ca, --redis-tls-cert and --redis-tls-key"
	case redis.HasErrorPrefix(err, "NOPERM") || strings.Contains(err.Error(), "can't run this command") ||
		strings.Contains(err.Error(), "No permissions"):
		hint = "the Redis ACL user lacks a command or key kbridge needs: see the ACL rule in docs/operations.md"
	}
	return &AuthError{Service: "redis", Hint: hint, Err: err}
}

// kafkaAuthError wraps a Kafka refusal with what to check.
func kafkaAuthError(err error, group string) *AuthError {
	hint := "check --kafka-sasl, --kafka-username and --kafka-password-file"
	switch {
	case tlsFailure(err):
		hint = "check --kafka-tls-ca (the CA that signed the brokers' certificates)"
	case errors.Is(err, kafka.GroupAuthorizationFailed):
		hint = fmt.Sprintf("the Kafka user needs READ on group %q: see the ACLs in docs/operations.md", group)
	case errors.Is(err, kafka.ClusterAuthorizationFailed):
		hint = "the Kafka user lacks a cluster permission"
	}
	return &AuthError{Service: "kafka", Hint: hint, Err: err}
}
