package wire

import (
	"context"
	"errors"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
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
	if err := PublishVersion(ctx, rdb, "p"); err != nil {
		t.Fatalf("PublishVersion over junk: %v", err)
	}
	mr.Close()
	if err := CheckVersion(ctx, rdb, "p"); err == nil || errors.Is(err, ErrVersion) {
		t.Fatalf("CheckVersion with Redis down: want a Redis error, got %v", err)
	}
}
