package bridge

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

// TestDLQBoundOffsetsAsStrings: the bound compares the dead letters'
// offsets as decimal strings — Lua's numbers are doubles, and 2^53 + 1
// reads as 2^53 there; offsets above 10^15 used to bound nothing — ignores
// what is no int64 offset, counts the pending entries apart, and never
// publishes a dlq_commit_held_at below the committed offset.
func TestDLQBoundOffsetsAsStrings(t *testing.T) {
	ctx := context.Background()
	rdb := testenv.NewRedis(t).Client(t)
	for _, tt := range []struct {
		name         string
		offsets      []string // of the dead letters not exported
		pending      int      // of them read by someone in the export group
		want         string   // the frontier offered
		committed    int64
		low, heldAt  string
		unexp, npend int64
	}{
		{"above 2^53", []string{"9007199254740993", "9007199254740992", "9007199254740994"}, 0, "9223372036854775807", -1,
			"9007199254740992", "9007199254740992", 3, 0},
		{"leading zeros, junk, above int64", []string{"00012", "x1", "9223372036854775808", "", "-3", "13"}, 0, "100", -1,
			"12", "12", 6, 0},
		{"above 10^15, not held", []string{"1000000000000005"}, 0, "100", 50, "1000000000000005", "-1", 1, 0},
		{"below committed (a replayed record)", []string{"4"}, 1, "100", 50, "4", "50", 1, 1},
		{"pending ones", []string{"30", "20", "40"}, 2, "100", 10, "20", "20", 3, 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			key := wire.StreamKey(testenv.Name(t), "t", 0)
			dlq, status := wire.DLQKey(key), wire.StatusKey(key)
			if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: key, ID: "5-1", Values: []any{"offset", "5"}}).Err(); err != nil {
				t.Fatal(err)
			}
			for _, o := range tt.offsets {
				if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: dlq, Values: []any{"offset", o}}).Err(); err != nil {
					t.Fatal(err)
				}
			}
			if err := rdb.XGroupCreate(ctx, dlq, wire.DLQExportGroup, "0").Err(); err != nil {
				t.Fatal(err)
			}
			if tt.pending > 0 {
				if err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: wire.DLQExportGroup, Consumer: "zombie",
					Streams: []string{dlq, ">"}, Count: int64(tt.pending)}).Err(); err != nil {
					t.Fatal(err)
				}
			}
			if err := rdb.HSet(ctx, status, "top", "5").Err(); err != nil {
				t.Fatal(err)
			}
			v, err := dlqBoundScript.Run(ctx, rdb, []string{key, dlq, status}, wire.DLQExportGroup, 5, dlqScanLimit, tt.want, tt.committed).Slice()
			if err != nil || len(v) != 4 {
				t.Fatalf("bound: %v %v", v, err)
			}
			low := v[1]
			if s, ok := low.(string); !ok || s != tt.low || v[0] != int64(1) || v[2] != tt.unexp || v[3] != tt.npend {
				t.Errorf("bound = %q, want {1, %q, %d, %d}", v, tt.low, tt.unexp, tt.npend)
			}
			st, _ := rdb.HGetAll(ctx, status).Result()
			if st[StatusDLQHeldAt] != tt.heldAt {
				t.Errorf("%s = %q, want %q (committed %d)", StatusDLQHeldAt, st[StatusDLQHeldAt], tt.heldAt, tt.committed)
			}
			t.Logf("offsets %q (%d pending), frontier %s, committed %d: lowest %v, %s=%s, %s=%s",
				tt.offsets, tt.pending, tt.want, tt.committed, low, StatusDLQHeldAt, st[StatusDLQHeldAt], StatusDLQUnexported, st[StatusDLQUnexported])
		})
	}
}
