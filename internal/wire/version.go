package wire

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// Version is the version of the wire contract (docs/wire.md) that this code
// writes and reads. It changes only when a worker written for the previous
// version would misread what is in Redis.
const Version = 1

// FieldVersion is the field of the version hash (VersionKey) that holds the
// contract version, a canonical decimal.
const FieldVersion = "version"

// ErrVersion is wrapped by CheckVersion and PublishVersion errors: Redis holds
// a wire contract version that this code does not speak.
var ErrVersion = errors.New("wire contract version mismatch")

// VersionKey returns the key of the hash where the ingest publishes the wire
// contract version: "<prefix>:wire", field "version".
func VersionKey(prefix string) string { return prefix + ":wire" }

// ParseVersion parses a version as the contract writes it: a canonical
// decimal ("0", or 1-9 followed by digits: no sign, space, leading zero,
// fraction or exponent) of at most 18 digits. The worker's check
// (CheckVersion) and the ingest's publish script (PublishVersion) read the
// version by this one rule: "01", "+1", "1.0" or "1e0" are not version 1.
func ParseVersion(s string) (int64, bool) {
	if len(s) > 18 {
		return 0, false
	}
	return parseDecimal(s, false)
}

// publishScript sets the version unless the key holds something else than
// a canonical decimal not above it (ParseVersion's rule, in Lua: digits
// compared as text, shorter is smaller). It returns {} when it set the
// version, else {what the key holds}. KEYS[1] version key; ARGV[1] version.
var publishScript = redis.NewScript(`
local v = redis.call('HGET', KEYS[1], 'version')
if v and v ~= ARGV[1] then
  local canonical = #v <= 18 and (v == '0' or string.match(v, '^[1-9][0-9]*$') ~= nil)
  if not canonical or #v > #ARGV[1] or (#v == #ARGV[1] and v > ARGV[1]) then return {v} end
end
redis.call('HSET', KEYS[1], 'version', ARGV[1])
return {}
`)

// PublishVersion records Version in VersionKey(prefix), as the ingest does at
// start-up. It refuses (an error wrapping ErrVersion) when Redis already
// holds a higher version, written by a newer kbridge (this one would lower it
// under the feet of the workers that rely on it), or a value that is not a
// version (ParseVersion): neither is overwritten, since every worker stops on
// it and an operator must look.
func PublishVersion(ctx context.Context, rdb redis.Scripter, prefix string) error {
	res, err := publishScript.Run(ctx, rdb, []string{VersionKey(prefix)}, Version).Slice()
	if err != nil {
		return fmt.Errorf("publish wire version in %s: %w", VersionKey(prefix), err)
	}
	if len(res) == 0 {
		return nil
	}
	held, _ := res[0].(string)
	if _, ok := ParseVersion(held); !ok {
		return fmt.Errorf("%w: %s holds version %q, which is not a version (a canonical decimal): workers refuse it; delete the key or set it to %d",
			ErrVersion, VersionKey(prefix), held, Version)
	}
	return fmt.Errorf("%w: %s holds version %s, written by a newer kbridge; this one speaks version %d",
		ErrVersion, VersionKey(prefix), held, Version)
}

// CheckVersion reads the wire contract version under prefix. It returns nil
// when it is Version or absent (no ingest started yet, or one older than the
// version key: the layout is version 1's), an error wrapping ErrVersion when
// it is anything else (ParseVersion: "01" is not 1), and the Redis error when
// Redis cannot be read. A worker checks it before reading anything, and
// again at each discovery.
func CheckVersion(ctx context.Context, rdb redis.Cmdable, prefix string) error {
	s, err := rdb.HGet(ctx, VersionKey(prefix), FieldVersion).Result()
	if errors.Is(err, redis.Nil) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read wire version %s: %w", VersionKey(prefix), err)
	}
	if v, ok := ParseVersion(s); !ok || v != Version {
		return fmt.Errorf("%w: %s says version %q; this worker speaks version %d (docs/wire.md)",
			ErrVersion, VersionKey(prefix), s, Version)
	}
	return nil
}
