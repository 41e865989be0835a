package wire_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
	"github.com/kbridge/kbridge/worker"
)

// TestDeadLetterFieldCap: an entry of wire.MaxFields fields (valid) is
// dead-lettered by deadletter.lua with all its fields and replayed by
// replay.lua, and decodes again on the replay stream; one of MaxFields+1
// fields (malformed) is dead-lettered with the contract's fields only. The
// Lua of redis-server refuses to unpack 8000 values, which an uncapped entry
// reaches at about 4000 fields (review finding 6 of issue 9). On the real
// redis-server with REDIS_ADDR, else on miniredis.
func TestDeadLetterFieldCap(t *testing.T) {
	env := testenv.NewRedis(t)
	rdb := env.Client(t)
	ctx := context.Background()
	prefix := testenv.Name(t)
	deadletter := redis.NewScript(worker.ScriptSource("deadletter.lua"))
	replay := redis.NewScript(worker.ScriptSource("replay.lua"))
	for i, tt := range []struct {
		fields    int
		malformed bool
	}{{wire.MaxFields, false}, {wire.MaxFields + 1, true}} {
		st := wire.StreamKey(prefix, "cap", i)
		defer rdb.Del(ctx, st, wire.DLQKey(st), wire.ReplayKey(st))
		r := wire.Record{Topic: "cap", Partition: i, Offset: 7, Time: time.UnixMilli(1), Value: []byte("v")}
		args := r.AppendFields(nil)
		for j := 0; len(args)/2 < tt.fields; j++ {
			args = append(args, fmt.Sprintf("x-%04d", j), "y")
		}
		if err := rdb.XGroupCreateMkStream(ctx, st, "g", "0").Err(); err != nil {
			t.Fatal(err)
		}
		if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: st, ID: wire.EntryID(7), Values: args}).Err(); err != nil {
			t.Fatal(err)
		}
		res, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "c", Streams: []string{st, ">"}, Count: 1}).Result()
		if err != nil {
			t.Fatal(err)
		}
		m := res[0].Messages[0]
		_, derr := wire.DecodeEntry(st, m.ID, m.Values)
		if (derr != nil) != tt.malformed {
			t.Fatalf("%d fields: DecodeEntry error %v, want malformed=%v", tt.fields, derr, tt.malformed)
		}
		fields := wire.DeadLetterFields(m.Values, wire.DLQInfo{Reason: wire.ReasonMaxDeliveries, Group: "g", Consumer: "c",
			Deliveries: 1, Stream: st, ID: m.ID, Time: time.Now()})
		n, err := deadletter.Run(ctx, rdb, []string{st, wire.DLQKey(st)}, append([]any{"g", "c", m.ID}, fields...)...).Int64()
		if err != nil || n != 1 {
			t.Fatalf("%d fields: deadletter.lua = %d, %v; want 1", tt.fields, n, err)
		}
		dls, err := rdb.XRange(ctx, wire.DLQKey(st), "-", "+").Result()
		if err != nil || len(dls) != 1 {
			t.Fatalf("%d fields: dead letters %d, %v", tt.fields, len(dls), err)
		}
		want := tt.fields + 8
		if tt.malformed {
			want = 5 + 8 // topic, partition, offset, timestamp, value
		}
		if got := len(dls[0].Values); got != want {
			t.Errorf("%d fields: the dead letter has %d fields, want %d", tt.fields, got, want)
		}
		if n, err := replay.Run(ctx, rdb, []string{wire.DLQKey(st), wire.ReplayKey(st)}, dls[0].ID).Int64(); err != nil || n != 1 {
			t.Fatalf("%d fields: replay.lua = %d, %v; want 1", tt.fields, n, err)
		}
		back, err := rdb.XRange(ctx, wire.ReplayKey(st), "-", "+").Result()
		if err != nil || len(back) != 1 {
			t.Fatalf("%d fields: replayed %d, %v", tt.fields, len(back), err)
		}
		if _, err := wire.DecodeEntry(wire.ReplayKey(st), back[0].ID, back[0].Values); err != nil {
			t.Errorf("%d fields: the replayed entry does not decode: %v", tt.fields, err)
		}
		t.Logf("%d fields: malformed=%v, dead letter of %d fields, replayed", tt.fields, tt.malformed, len(dls[0].Values))
	}
	if env.Mini != nil {
		return
	}
	// Why the cap: 4000 fields cannot be passed to one XADD from Lua.
	st := wire.StreamKey(prefix, "cap", 9)
	defer rdb.Del(ctx, st, wire.DLQKey(st))
	if err := rdb.XGroupCreateMkStream(ctx, st, "g", "0").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: st, ID: "0-1", Values: []any{"topic", "cap"}}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "c", Streams: []string{st, ">"}, Count: 1}).Err(); err != nil {
		t.Fatal(err)
	}
	args := []any{"g", "c", "0-1"}
	for j := range 4000 {
		args = append(args, fmt.Sprintf("x-%04d", j), "y")
	}
	err := deadletter.Run(ctx, rdb, []string{st, wire.DLQKey(st)}, args...).Err()
	if err == nil || !strings.Contains(err.Error(), "unpack") {
		t.Errorf("deadletter.lua with 4000 fields: %v; want Lua's \"too many results to unpack\" (then the cap is not needed)", err)
	}
	t.Logf("deadletter.lua with 4000 fields on redis-server: %v", err)
}
