package worker

import (
	"context"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/wire"
)

// Start-up retries: a Redis that cannot be reached, or is loading, is
// asked again after startRetryMin, doubling up to startRetryMax, for as
// long as Run's context lasts (workers are started before Redis as often
// as after it).
const (
	startRetryMin = 100 * time.Millisecond
	startRetryMax = 5 * time.Second
)

// startup runs the checks Run makes before it reads anything: that Redis
// accepts this worker's credentials and lets it run every command it needs
// (probeRedis), and that the wire contract under the prefix is the version
// this worker speaks (wire.CheckVersion). A refusal (*AuthError) or another
// version (an error wrapping ErrWireVersion) is returned at once: no retry
// can fix it. Anything else (Redis down, loading, a timeout) is logged and
// retried with backoff until ctx ends; then startup returns ctx's error.
func (w *Worker) startup(ctx context.Context) error {
	delay := startRetryMin
	for attempt := 1; ; attempt++ {
		err := w.probeRedis(ctx)
		if err == nil {
			err = wire.CheckVersion(ctx, w.rdb, w.cfg.Prefix)
		}
		var ae *AuthError
		switch {
		case err == nil:
			if attempt > 1 {
				w.log.Info("Redis reachable; starting", "attempts", attempt)
			}
			return nil
		case errors.As(err, &ae), errors.Is(err, wire.ErrVersion):
			return err
		case ctx.Err() != nil:
			return ctx.Err()
		}
		w.log.Warn("Redis not usable at start; retrying", "err", err, "attempt", attempt, "retry_in", delay)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		delay = min(2*delay, startRetryMax)
	}
}

// probeKey is the key the start-up probe names: under the prefix (the ACL
// rule's key pattern), never created.
func probeKey(prefix string) string { return prefix + ":{kbridge-worker-probe}" }

const probeEval = "return 1"

var probeEvalSHA = func() string {
	h := sha1.Sum([]byte(probeEval))
	return hex.EncodeToString(h[:])
}()

// workerCommands are the commands Run runs, directly or inside its Lua
// scripts (Redis checks a script's commands against the user's ACL too), as
// the ACL rule names them, each with a call that changes nothing: on a key
// that does not exist, so that the reply is nil or an error such as "no
// such key" or NOGROUP — Redis checks permissions before it looks at the
// key. (The dead-letter tools — replay, delete — use XRANGE and XDEL too:
// docs/operations.md has the whole rule.)
var workerCommands = []struct {
	command string
	args    func(k string) []any
}{
	{"eval", func(k string) []any { return []any{"eval", probeEval, 1, k} }},
	{"evalsha", func(k string) []any { return []any{"evalsha", probeEvalSHA, 1, k} }},
	{"smembers", func(k string) []any { return []any{"smembers", k} }},
	{"hget", func(k string) []any { return []any{"hget", k, "probe"} }},
	// HSET cannot change nothing: it writes a field that HDEL, next,
	// deletes (the hash goes with its last field).
	{"hset", func(k string) []any { return []any{"hset", k + ":runs", "probe", "1"} }},
	{"hdel", func(k string) []any { return []any{"hdel", k + ":runs", "probe"} }},
	{"hscan", func(k string) []any { return []any{"hscan", k + ":runs", 0, "count", 1} }}, // runsgc.lua
	{"xinfo|groups", func(k string) []any { return []any{"xinfo", "groups", k} }},
	{"xinfo|consumers", func(k string) []any { return []any{"xinfo", "consumers", k, "probe"} }},
	{"xreadgroup", func(k string) []any {
		return []any{"xreadgroup", "group", "probe", "probe", "count", 1, "streams", k, ">"}
	}},
	{"xack", func(k string) []any { return []any{"xack", k, "probe", "0-1"} }},
	{"xpending", func(k string) []any { return []any{"xpending", k, "probe"} }},
	{"xclaim", func(k string) []any { return []any{"xclaim", k, "probe", "probe", 0, "0-1", "justid"} }},
	{"xautoclaim", func(k string) []any { return []any{"xautoclaim", k, "probe", "probe", 0, "0-0", "count", 1, "justid"} }},
	{"xadd", func(k string) []any { return []any{"xadd", k, "NOMKSTREAM", "MAXLEN", "0", "*", "probe", "1"} }},
	{"xgroup|delconsumer", func(k string) []any { return []any{"xgroup", "delconsumer", k, "probe", "probe"} }},
}

// WorkerRedisCommands returns the Redis commands a Worker runs (directly or
// inside its scripts) as an ACL rule names them ("xinfo|groups"): what Run
// checks at start.
func WorkerRedisCommands() []string {
	var out []string
	for _, p := range workerCommands {
		out = append(out, p.command)
	}
	return out
}

// probeRedis makes one harmless call of each command the worker needs. It
// returns an *AuthError for refused credentials, a TLS failure, or commands
// the user may not run (naming each of them), the error itself while Redis
// cannot be used (unreachable, loading), and nil otherwise.
func (w *Worker) probeRedis(ctx context.Context) error {
	key := probeKey(w.cfg.Prefix)
	var refused []string
	var first error
	for _, p := range workerCommands {
		err := w.rdb.Do(ctx, p.args(key)...).Err()
		switch {
		case err == nil || errors.Is(err, redis.Nil):
		case tlsFailure(err), credentialsRefused(err):
			return redisAuthError(err)
		case authFailure(err):
			refused = append(refused, strings.ToUpper(p.command))
			if first == nil {
				first = err
			}
		case isRedisReply(err):
			// "no such key", NOGROUP, an unknown command on a Redis
			// that is not redis-server: allowed, which is what is asked
		default:
			return err // unreachable, timeout: retried
		}
	}
	if len(refused) > 0 {
		return redisAuthError(fmt.Errorf("the Redis user may not run %s on %s:*: %w",
			strings.Join(refused, ", "), w.cfg.Prefix, first))
	}
	return nil
}

// isRedisReply reports whether err is an error reply of the server (not a
// connection failure or a timeout).
func isRedisReply(err error) bool {
	var re redis.Error
	if !errors.As(err, &re) {
		return false
	}
	for _, p := range []string{"LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "BUSY "} {
		if redis.HasErrorPrefix(err, p) {
			return false // not ready yet: retried
		}
	}
	return true
}

// credentialsRefused reports Redis refusing the login itself: a wrong user
// or password (WRONGPASS), or a password needed and not given (NOAUTH).
func credentialsRefused(err error) bool {
	return redis.HasErrorPrefix(err, "WRONGPASS") || redis.HasErrorPrefix(err, "NOAUTH")
}

// authFailure reports whether a Redis error is a refusal of the worker's
// credentials or permissions: WRONGPASS, NOAUTH, NOPERM, or the ACL error
// a script gets for a command its user may not run.
func authFailure(err error) bool {
	if err == nil {
		return false
	}
	if credentialsRefused(err) || redis.HasErrorPrefix(err, "NOPERM") {
		return true
	}
	var re redis.Error
	return errors.As(err, &re) && (strings.Contains(err.Error(), "can't run this command") ||
		strings.Contains(err.Error(), "No permissions to access"))
}

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
		alertErr tls.AlertError
		opErr    *net.OpError
	)
	switch {
	case errors.As(err, &unknown), errors.As(err, &host), errors.As(err, &invalid),
		errors.As(err, &verify), errors.As(err, &header), errors.As(err, &alertErr):
		return true
	case errors.As(err, &opErr) && opErr.Op == "remote error":
		// crypto/tls reports an alert the server sent this way
		// ("remote error: tls: certificate required")
		return true
	}
	s := err.Error()
	return strings.Contains(s, "x509: ") || strings.Contains(s, "remote error: tls: ")
}

// redisAuthError wraps a Redis refusal with what to check.
func redisAuthError(err error) *AuthError {
	hint := "check the user and password of --redis-url / --redis-password-file"
	switch {
	case tlsFailure(err):
		hint = "check --redis-tls-ca, --redis-tls-cert and --redis-tls-key"
	case !credentialsRefused(err):
		hint = "the Redis ACL user lacks a command or key the worker needs: see the ACL rule in docs/operations.md"
	}
	return &AuthError{Hint: hint, Err: err}
}
