package bridge

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"
)

// Start-up checks, run by Run before it joins the consumer group: a refusal
// (wrong credentials, a certificate that does not verify, a Redis ACL user
// without a command the ingest needs, a Kafka group the user may not use)
// ends Run with an *AuthError at once; a Kafka or Redis that cannot be
// reached is retried for Config.StartupTimeout, then Run returns a
// *StartupError. Either way the ingest never joined the group and committed
// nothing, and the process can exit non-zero for an orchestrator to see.
// (Once running, an outage is retried for as long as it lasts.)

// permanent wraps an error that retry must return at once.
type permanent struct{ err error }

func (p permanent) Error() string { return p.err.Error() }

// retryStartup is retry bounded by StartupTimeout; an *AuthError is returned
// at once.
func (in *Ingest) retryStartup(ctx context.Context, service string, op func() error) error {
	deadline := time.Now().Add(in.cfg.StartupTimeout)
	return retry(ctx, in.log, service, func() error {
		err := op()
		var ae *AuthError
		switch {
		case err == nil:
			return nil
		case errors.As(err, &ae):
			return permanent{err}
		case !time.Now().Before(deadline):
			return permanent{&StartupError{Service: service, Timeout: in.cfg.StartupTimeout, Err: err}}
		}
		return err
	})
}

// probeKey is a key under the prefix that holds no data of kbridge's: the
// Redis start-up check runs its harmless calls on it (and on probeKey+":h",
// ":s", in the same Cluster slot).
func probeKey(prefix string) string { return prefix + ":{kbridge-probe}" }

const probeScript = "return 1"

var probeSHA = func() string {
	h := sha1.Sum([]byte(probeScript))
	return hex.EncodeToString(h[:])
}()

// redisProbe is one harmless call of a command the ingest runs, directly or
// inside its Lua scripts (Redis checks a script's commands against the
// user's ACL too).
type redisProbe struct {
	// command as the ACL rule names it (docs/operations.md)
	command string
	args    func(key string) []any
}

// ingestRedisCommands are the commands the ingest runs, each with a call
// that changes nothing kbridge reads: on keys that do not exist (the reply is
// an error such as "no such key", which is fine: Redis checks permissions
// before it looks at the key), or on two probe keys that expire at once.
var ingestRedisCommands = []redisProbe{
	{"exists", func(k string) []any { return []any{"exists", k} }},
	{"eval", func(k string) []any { return []any{"eval", probeScript, 1, k} }},
	{"evalsha", func(k string) []any { return []any{"evalsha", probeSHA, 1, k} }},
	{"xadd", func(k string) []any { return []any{"xadd", k, "NOMKSTREAM", "MAXLEN", "0", "*", "probe", "1"} }},
	{"xtrim", func(k string) []any { return []any{"xtrim", k, "MINID", "0"} }},
	{"xrange", func(k string) []any { return []any{"xrange", k, "-", "+", "COUNT", "1"} }},
	{"xinfo|stream", func(k string) []any { return []any{"xinfo", "stream", k} }},
	{"xinfo|groups", func(k string) []any { return []any{"xinfo", "groups", k} }},
	{"xpending", func(k string) []any { return []any{"xpending", k, "probe"} }},
	{"xgroup|create", func(k string) []any { return []any{"xgroup", "create", k, "probe", "0"} }},
	{"xgroup|setid", func(k string) []any { return []any{"xgroup", "setid", k, "probe", "0"} }},
	{"pexpire", func(k string) []any { return []any{"pexpire", k + ":h", 1} }},
	{"hset", func(k string) []any { return []any{"hset", k + ":h", "probe", "1"} }},
	{"hget", func(k string) []any { return []any{"hget", k + ":h", "probe"} }},
	{"pexpire", func(k string) []any { return []any{"pexpire", k + ":h", 1} }},
	{"sadd", func(k string) []any { return []any{"sadd", k + ":s", "probe"} }},
	{"pexpire", func(k string) []any { return []any{"pexpire", k + ":s", 1} }},
}

// dlqExportRedisCommands are the commands the dead-letter export adds
// (dlqexport.go: it reads the dead-letter streams as a consumer group).
var dlqExportRedisCommands = []redisProbe{
	{"xreadgroup", func(k string) []any {
		return []any{"xreadgroup", "group", "probe", "probe", "count", 1, "streams", k, ">"}
	}},
	{"xautoclaim", func(k string) []any { return []any{"xautoclaim", k, "probe", "probe", 0, "0-0", "count", 1, "justid"} }},
	{"xack", func(k string) []any { return []any{"xack", k, "probe", "0-1"} }},
}

// redisProbes returns the probes of the commands this configuration runs.
func (c Config) redisProbes() []redisProbe {
	if c.DisableDLQExport {
		return ingestRedisCommands
	}
	return append(slices.Clone(ingestRedisCommands), dlqExportRedisCommands...)
}

// IngestRedisCommands returns the Redis commands an ingest with the default
// configuration runs (directly or inside its scripts; the dead-letter export
// included), as an ACL rule names them ("xgroup|create"): what the start-up
// check tries. docs/operations.md gives the whole rule. The last three, EXEC,
// MULTI and RENAME, are wanted, not required: without them the ingest
// appends with its script (probeAppendPath).
func IngestRedisCommands() []string {
	var out []string
	for _, p := range DefaultConfig().redisProbes() {
		if !slices.Contains(out, p.command) {
			out = append(out, p.command)
		}
	}
	return append(out, multiAppendRedisCommands...)
}

// redisTransient reports Redis errors that mean "not ready yet" rather than
// "refused": retried like an unreachable server.
func redisTransient(err error) bool {
	for _, p := range []string{"LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "BUSY "} {
		if redis.HasErrorPrefix(err, p) {
			return true
		}
	}
	return false
}

// probeRedis makes one harmless call of each command the ingest needs. It
// returns an *AuthError naming every command the user may not run (or the
// credentials Redis refused, or the TLS failure), a plain error while Redis
// cannot be reached, and nil otherwise.
func (in *Ingest) probeRedis(ctx context.Context) error {
	key := probeKey(in.cfg.Prefix)
	var refused []string
	var first error
	for _, p := range in.cfg.redisProbes() {
		err := in.cfg.Redis.Do(ctx, p.args(key)...).Err()
		switch {
		case err == nil || errors.Is(err, redis.Nil):
		case tlsFailure(err):
			return redisAuthError(err)
		case isConnError(err) || redisTransient(err):
			in.counters.redisErrs.Add(1)
			return err
		case redis.HasErrorPrefix(err, "WRONGPASS") || redis.HasErrorPrefix(err, "NOAUTH"):
			return redisAuthError(err)
		case redisAuthFailure(err):
			if !slices.Contains(refused, p.command) {
				refused = append(refused, p.command)
			}
			if first == nil {
				first = err
			}
		}
	}
	if len(refused) > 0 {
		return redisAuthError(fmt.Errorf("the Redis user may not run %s on %s:*: %w",
			strings.ToUpper(strings.Join(refused, ", ")), in.cfg.Prefix, first))
	}
	return nil
}

// multiAppendRedisCommands are the commands of the MULTI/EXEC append path
// (stream_multi.go): wanted, not required. A user without them (an ACL rule
// written before that path) appends with the script, as before.
var multiAppendRedisCommands = []string{"exec", "multi", "rename"}

// probeAppendPath finds whether the user may run MULTI, EXEC and RENAME,
// sets in.appendMulti, and logs which append path the ingest takes. EXEC is
// tried alone first ("EXEC without MULTI" once permitted): a MULTI followed
// by a refused EXEC would leave the connection inside the transaction. A
// refused MULTI runs the EXISTS at once and the EXEC finds no transaction.
func (in *Ingest) probeAppendPath(ctx context.Context) error {
	key := probeKey(in.cfg.Prefix)
	var refused []string
	var first error
	for _, c := range multiAppendRedisCommands {
		var err error
		switch c {
		case "exec":
			err = in.cfg.Redis.Do(ctx, "exec").Err()
		case "multi":
			if len(refused) > 0 {
				continue // EXEC refused: MULTI is not tried
			}
			_, err = in.cfg.Redis.TxPipelined(ctx, func(p redis.Pipeliner) error {
				p.Exists(ctx, key)
				return nil
			})
		case "rename":
			err = in.cfg.Redis.Do(ctx, "rename", key+":r", key+":r2").Err()
		}
		switch {
		case err == nil || errors.Is(err, redis.Nil):
		case isNoPerm(err):
			refused = append(refused, c)
			if first == nil {
				first = err
			}
		case isConnError(err) || redisTransient(err) || tlsFailure(err):
			in.counters.redisErrs.Add(1)
			return err
		case redis.HasErrorPrefix(err, "EXEC without MULTI") || redis.HasErrorPrefix(err, "no such key"):
			// permitted (HasErrorPrefix drops the "ERR ")
		default:
			// anything else (a proxy without transactions, a renamed
			// command): the script path, which needs neither
			refused = append(refused, c)
			if first == nil {
				first = err
			}
		}
	}
	if len(refused) == 0 {
		in.appendMulti.Store(true)
		in.log.Info("append path: MULTI/EXEC transactions of plain XADDs behind a guard script")
		return nil
	}
	in.appendMulti.Store(false)
	in.log.Warn("append path: the append script (slower: Redis spends about twice the CPU per record); the Redis user may not run "+
		strings.ToUpper(strings.Join(refused, ", "))+": add +multi +exec +rename to its ACL rule (docs/operations.md)", "err", first)
	return nil
}

// checkRedis runs the Redis start-up checks: the commands the ingest needs
// (probeRedis), then maxmemory-policy (invariant 5): refuse a Redis that may
// evict keys, or warn about it. CONFIG GET may be refused (managed Redis, the
// documented ACL rule leaves it out): then it warns and goes on.
func (in *Ingest) checkRedis(ctx context.Context) error {
	if err := in.retryStartup(ctx, "redis", func() error { return in.probeRedis(ctx) }); err != nil {
		return err
	}
	if err := in.retryStartup(ctx, "redis", func() error { return in.probeAppendPath(ctx) }); err != nil {
		return err
	}
	var policy string
	err := in.retryStartup(ctx, "redis", func() error {
		p, err := maxmemoryPolicy(ctx, in.cfg.Redis)
		switch {
		case err == nil:
			policy = p
		case tlsFailure(err):
			return redisAuthError(err)
		case isConnError(err) || redisTransient(err):
			in.counters.redisErrs.Add(1)
			return err
		case redis.HasErrorPrefix(err, "WRONGPASS") || redis.HasErrorPrefix(err, "NOAUTH"):
			return redisAuthError(err)
		default:
			// CONFIG may be refused (NOPERM: the documented ACL rule
			// leaves it out) or renamed: cannot tell
			in.log.Debug("CONFIG GET maxmemory-policy failed", "err", err)
			policy = ""
		}
		return nil
	})
	if err != nil {
		return err
	}
	switch policy {
	case "noeviction":
		return nil
	case "":
		in.log.Warn("cannot read maxmemory-policy (CONFIG GET refused); make sure it is noeviction, or evicted streams lose records")
		return nil
	}
	if in.cfg.AllowEviction {
		in.log.Error("REDIS MAY EVICT STREAMS: maxmemory-policy is not noeviction; evicted records that no worker processed are fetched again only if the loss is noticed, and an evicted dead-letter stream loses the dead letters not yet in Kafka", "maxmemory_policy", policy)
		return nil
	}
	return fmt.Errorf("%w: it is %q; set it with CONFIG SET maxmemory-policy noeviction, or pass --allow-eviction", ErrEvictionPolicy, policy)
}

// maxmemoryPolicy reads maxmemory-policy; on a Redis Cluster that of every
// master (CONFIG GET alone asks one node), returning one that is not
// noeviction if there is one.
func maxmemoryPolicy(ctx context.Context, rdb redis.UniversalClient) (string, error) {
	c, ok := rdb.(*redis.ClusterClient)
	if !ok {
		res, err := rdb.ConfigGet(ctx, "maxmemory-policy").Result()
		return res["maxmemory-policy"], err
	}
	var mu sync.Mutex
	policy := "noeviction"
	err := c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		res, err := m.ConfigGet(ctx, "maxmemory-policy").Result()
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		if p := res["maxmemory-policy"]; p != "noeviction" {
			policy = p
		}
		return nil
	})
	return policy, err
}

// kafkaError classifies an error of a Kafka request made at start: a
// refusal becomes an *AuthError, anything else is retried.
func (in *Ingest) kafkaError(err error) error {
	if err != nil && (kafkaAuthFailure(err) || tlsFailure(err)) {
		return kafkaAuthError(err, in.cfg.Group)
	}
	return err
}

// checkKafka runs the Kafka start-up checks: the brokers answer a metadata
// request for the topics (the connection's TLS and SASL succeed; the topics'
// states are known from then on, see topics.go), and the
// user may describe the consumer group (its committed offsets). A user that
// may describe the group but not read it is refused when joining, which Run
// treats the same way.
func (in *Ingest) checkKafka(ctx context.Context) error {
	err := in.retryStartup(ctx, "kafka", func() error {
		return in.kafkaError(in.pollTopics(ctx))
	})
	if err != nil {
		return err
	}
	return in.retryStartup(ctx, "kafka", func() error {
		res, err := in.client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: in.cfg.Group})
		if err == nil {
			err = res.Error
		}
		if errors.Is(err, kafka.GroupIdNotFound) {
			return nil // a new group (some brokers say so)
		}
		return in.kafkaError(err)
	})
}
