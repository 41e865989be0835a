package wire

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/testenv"
)

// TestVersion: the ingest publishes the version, a worker checks it; a newer
// version refuses both an older ingest (it would lower it) and an older
// worker; an absent key is version 1's layout.
func TestVersion(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	ctx := context.Background()
	if err := CheckVersion(ctx, rdb, "p"); err != nil {
		t.Fatalf("CheckVersion with no key: want nil, got %v", err)
	}
	if err := PublishVersion(ctx, rdb, "p"); err != nil {
		t.Fatalf("PublishVersion: %v", err)
	}
	if got := mr.HGet("p:wire", "version"); got != "1" {
		t.Fatalf("p:wire version = %q, want 1", got)
	}
	if err := CheckVersion(ctx, rdb, "p"); err != nil {
		t.Fatalf("CheckVersion after PublishVersion: want nil, got %v", err)
	}
	mr.HSet("p:wire", "version", "2")
	if err := CheckVersion(ctx, rdb, "p"); !errors.Is(err, ErrVersion) {
		t.Fatalf("CheckVersion of version 2: want ErrVersion, got %v", err)
	}
	if err := PublishVersion(ctx, rdb, "p"); !errors.Is(err, ErrVersion) {
		t.Fatalf("PublishVersion over version 2: want ErrVersion, got %v", err)
	}
	if got := mr.HGet("p:wire", "version"); got != "2" {
		t.Fatalf("an older ingest changed the version to %q", got)
	}
	mr.HSet("p:wire", "version", "junk")
	if err := CheckVersion(ctx, rdb, "p"); !errors.Is(err, ErrVersion) {
		t.Fatalf("CheckVersion of junk: want ErrVersion, got %v", err)
	}
	if err := PublishVersion(ctx, rdb, "p"); !errors.Is(err, ErrVersion) || !strings.Contains(err.Error(), "not a version") {
		t.Fatalf("PublishVersion over junk: want ErrVersion saying it is not a version, got %v", err)
	}
	mr.Close()
	if err := CheckVersion(ctx, rdb, "p"); err == nil || errors.Is(err, ErrVersion) {
		t.Fatalf("CheckVersion with Redis down: want a Redis error, got %v", err)
	}
}

// TestVersionOddValues: the worker's check and the ingest's publish script
// read <prefix>:wire by one rule (a canonical decimal, ParseVersion): on every
// value but "1" (and absent) the worker stops, and the ingest either leaves a
// version its workers accept or refuses to start, never overwriting what is
// not a version nor lowering a higher one. On the real redis-server with
// REDIS_ADDR (the script runs in Redis's Lua), else on miniredis.
func TestVersionOddValues(t *testing.T) {
	rdb := testenv.NewRedis(t).Client(t)
	ctx := context.Background()
	prefix := testenv.Name(t)
	defer rdb.Del(ctx, VersionKey(prefix))
	for _, tt := range []struct {
		held    string
		publish bool // the ingest starts (and leaves "1")
	}{
		{"1", true}, {"0", true},
		{"2", false}, {"10", false}, {"999999999999999999", false}, {"99999999999999999999", false},
		{"01", false}, {"+1", false}, {"-1", false}, {"1.0", false}, {"1.5", false}, {"2abc", false}, {"abc", false},
		{" 1", false}, {"1 ", false}, {"0x2", false}, {"1e0", false}, {"", false}, {"\x001", false},
	} {
		if err := rdb.HSet(ctx, VersionKey(prefix), FieldVersion, tt.held).Err(); err != nil {
			t.Fatal(err)
		}
		werr := CheckVersion(ctx, rdb, prefix)
		if (werr == nil) != (tt.held == "1") {
			t.Errorf("CheckVersion of %q: %v; want nil only for \"1\"", tt.held, werr)
		}
		if werr != nil && !errors.Is(werr, ErrVersion) {
			t.Errorf("CheckVersion of %q: %v does not wrap ErrVersion", tt.held, werr)
		}
		ierr := PublishVersion(ctx, rdb, prefix)
		after, err := rdb.HGet(ctx, VersionKey(prefix), FieldVersion).Result()
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case tt.publish && (ierr != nil || after != "1"):
			t.Errorf("PublishVersion over %q: %v, leaves %q; want nil and \"1\"", tt.held, ierr, after)
		case !tt.publish && (!errors.Is(ierr, ErrVersion) || after != tt.held):
			t.Errorf("PublishVersion over %q: %v, leaves %q; want ErrVersion and the value untouched", tt.held, ierr, after)
		}
		t.Logf("version %-22q worker: %v | ingest: %v", tt.held, werr, ierr)
	}
}

func TestParseVersion(t *testing.T) {
	for s, want := range map[string]int64{"0": 0, "1": 1, "42": 42, "999999999999999999": 999999999999999999} {
		if got, ok := ParseVersion(s); !ok || got != want {
			t.Errorf("ParseVersion(%q) = %d, %v; want %d", s, got, ok, want)
		}
	}
	for _, s := range []string{"", "01", "+1", "-1", "1.0", "1e0", " 1", "1 ", "0x1", "1000000000000000000", "٣"} {
		if got, ok := ParseVersion(s); ok {
			t.Errorf("ParseVersion(%q) = %d; want not a version", s, got)
		}
	}
}
