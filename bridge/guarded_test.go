package bridge

import (
	"context"
	"slices"
	"testing"
)

// TestAppendGuarded: the benchmark entry point appends what the ingest would
// (every record once, in batches, the stream's top moving with them) and
// refuses what the guard refuses: a missing stream adds nothing and creates
// nothing, an expected top ahead of the stream's is a loss.
func TestAppendGuarded(t *testing.T) {
	ctx := context.Background()
	s, rdb := newStreamPath(t, 500, true)
	if n, err := AppendGuarded(ctx, rdb, s.key, 4, -1, recs(span(0, 9)...)); err == nil || n != 0 {
		t.Fatalf("missing stream: added %d, err %v; want 0 and an error", n, err)
	}
	if n, _ := rdb.Exists(ctx, s.key).Result(); n != 0 {
		t.Fatal("a refused append created the stream")
	}
	if err := s.ensure(ctx); err != nil {
		t.Fatal(err)
	}
	n, err := AppendGuarded(ctx, rdb, s.key, 4, -1, recs(span(0, 9)...))
	if err != nil || n != 10 {
		t.Fatalf("added %d, err %v; want 10", n, err)
	}
	if got := streamOffsets(t, rdb, s.key); !slices.Equal(got, span(0, 9)) {
		t.Fatalf("stream holds %v", got)
	}
	// the top is 9: expecting 12 means the stream lost 10..12
	if n, err := AppendGuarded(ctx, rdb, s.key, 4, 12, recs(span(13, 15)...)); err == nil || n != 0 {
		t.Fatalf("top behind: added %d, err %v; want 0 and an error", n, err)
	}
	if _, err := AppendGuarded(ctx, rdb, s.key, 0, 9, recs(10)); err == nil {
		t.Fatal("batch size 0 accepted")
	}
	if got := streamOffsets(t, rdb, s.key); !slices.Equal(got, span(0, 9)) {
		t.Fatalf("after the refusals the stream holds %v", got)
	}
}
