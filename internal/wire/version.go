package wire

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"
)

// Version is the version of the wire contract (docs/wire.md) that this code
// writes and reads. It changes only when a worker written for the previous
// version would misread what is in Redis.
const Version = 1

// FieldVersion is the field of the version hash (VersionKey) that holds the
// contract version, a decimal.
const FieldVersion = "version"

// ErrVersion is wrapped by CheckVersion and PublishVersion errors: Redis holds
// a wire contract version that this code does not speak.
var ErrVersion = errors.New("wire contract version mismatch")

// VersionKey returns the key of the hash where the ingest publishes the wire
// contract version: "<prefix>:wire", field "version".
func VersionKey(prefix string) string { return prefix + ":wire" }

// publishScript sets the version unless a higher one is there; it returns
// the version the key holds afterwards. KEYS[1] version key; ARGV[1] version.
var publishScript = redis.NewScript(`
local v = tonumber(redis.call('HGET', KEYS[1], 'version') or '')
if v ~= nil and v > tonumber(ARGV[1]) then return v end
redis.call('HSET', KEYS[1], 'version', ARGV[1])
return tonumber(ARGV[1])
`)

// PublishVersion records Version in VersionKey(prefix), as the ingest does at
// start-up. It refuses (an error wrapping ErrVersion) when Redis already
// holds a higher version, written by a newer kbridge: this one would lower it
// under the feet of the workers that rely on it.
func PublishVersion(ctx context.Context, rdb redis.Scripter, prefix string) error {
	v, err := publishScript.Run(ctx, rdb, []string{VersionKey(prefix)}, Version).Int64()
	if err != nil {
		return fmt.Errorf("publish wire version in %s: %w", VersionKey(prefix), err)
	}
	if v != Version {
		return fmt.Errorf("%w: %s holds version %d, written by a newer kbridge; this one speaks version %d",
			ErrVersion, VersionKey(prefix), v, Version)
	}
	return nil
}

// CheckVersion reads the wire contract version under prefix. It returns nil
// when it is Version or absent (no ingest started yet, or one older than the
// version key: the layout is version 1's), an error wrapping ErrVersion when
// it is anything else, and the Redis error when Redis cannot be read. A
// worker checks it before reading anything, and again from time to time.
func CheckVersion(ctx context.Context, rdb redis.Cmdable, prefix string) error {
	s, err := rdb.HGet(ctx, VersionKey(prefix), FieldVersion).Result()
	if errors.Is(err, redis.Nil) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read wire version %s: %w", VersionKey(prefix), err)
	}
	if v, perr := strconv.Atoi(s); perr != nil || v != Version {
		return fmt.Errorf("%w: %s says version %q; this worker speaks version %d (docs/wire.md)",
			ErrVersion, VersionKey(prefix), s, Version)
	}
	return nil
}
