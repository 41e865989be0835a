package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/bridge"
	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

// TestGroupsListRemove: "kbridge groups list" shows every group on the
// registered streams with what it holds; "remove" refuses while a running
// ingest still creates the group, shows what it would do without --yes
// (exit 2, nothing destroyed), and destroys it on every stream with --yes.
func TestGroupsListRemove(t *testing.T) {
	ctx := context.Background()
	r := testenv.NewRedis(t)
	rdb := r.Client(t)
	prefix := "kbg-" + testenv.Name(t)
	var streams []string
	for p := 0; p < 2; p++ {
		key := wire.StreamKey(prefix, "orders", p)
		streams = append(streams, key)
		rdb.SAdd(ctx, wire.RegistryKey(prefix), key)
		for off := int64(0); off < 5; off++ {
			rdb.XAdd(ctx, &redis.XAddArgs{Stream: key, ID: wire.EntryID(off), Values: []string{"offset", "x"}})
		}
		for _, g := range []string{"workers", "audit"} {
			if err := rdb.XGroupCreate(ctx, key, g, "0").Err(); err != nil {
				t.Fatal(err)
			}
		}
		// workers read and acked 0..2; audit read 0..1 and acked nothing.
		rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "workers", Consumer: "w", Streams: []string{key, ">"}, Count: 3, Block: -1})
		rdb.XAck(ctx, key, "workers", wire.EntryID(0), wire.EntryID(1), wire.EntryID(2))
		rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "audit", Consumer: "a", Streams: []string{key, ">"}, Count: 2, Block: -1})
		rdb.HSet(ctx, wire.StatusKey(key), bridge.StatusWorkerGroups, "workers,audit", bridge.StatusOwner, "host:42")
	}
	url := "redis://" + r.Addr
	out, errs, code := runCLI(t, "--redis-url", url, "--prefix", prefix, "groups", "list", "--json")
	if code != 0 {
		t.Fatalf("groups list: exit %d: %s", code, errs)
	}
	holds := map[string]int64{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var row groupRow
		if err := json.Unmarshal([]byte(line), &row); err != nil {
			t.Fatalf("groups list --json line %q: %v", line, err)
		}
		holds[row.Stream+" "+row.Group] = row.Holds
		if row.CreatedBy != "host:42" {
			t.Errorf("%s %s: created by %q, want host:42", row.Stream, row.Group, row.CreatedBy)
		}
	}
	for _, s := range streams {
		if holds[s+" workers"] != 3 || holds[s+" audit"] != 0 {
			t.Errorf("%s: holds %v, want workers at 3, audit at 0", s, holds)
		}
	}
	if len(holds) != 4 {
		t.Errorf("listed %d groups, want 4: %v", len(holds), holds)
	}

	// A running ingest still creates audit: refused.
	_, errs, code = runCLI(t, "--redis-url", url, "--prefix", prefix, "groups", "remove", "--group", "audit", "--yes")
	if code != 1 || !strings.Contains(errs, "host:42") || !strings.Contains(errs, "--worker-groups") {
		t.Errorf("remove while an ingest lists the group: exit %d, %q; want 1 naming the ingest and --worker-groups", code, errs)
	}
	for _, s := range streams {
		rdb.HSet(ctx, wire.StatusKey(s), bridge.StatusWorkerGroups, "workers")
	}
	// Without --yes: what it would do, nothing done.
	out, errs, code = runCLI(t, "--redis-url", url, "--prefix", prefix, "groups", "remove", "--group", "audit")
	if code != 2 || !strings.Contains(out, "would destroy group audit on 2 streams (4 pending") || !strings.Contains(errs, "--yes") {
		t.Errorf("remove without --yes: exit %d, out %q, err %q; want 2, the plan, and --yes", code, out, errs)
	}
	if n := countGroups(t, rdb, streams[0]); n != 2 {
		t.Errorf("groups after a remove without --yes: %d, want 2", n)
	}
	// Runs records of both groups (docs/wire.md rule 8): the removed
	// group's go with it, the other's stay.
	for _, s := range streams {
		for _, g := range []string{"audit", "workers"} {
			rdb.HSet(ctx, wire.RunsKey(s, g), "0-1", 2)
			rdb.HSet(ctx, wire.RunsKey(wire.ReplayKey(s), g), "1-1", 2)
			t.Cleanup(func() { rdb.Del(context.Background(), wire.RunsKey(s, g), wire.RunsKey(wire.ReplayKey(s), g)) })
		}
	}
	out, errs, code = runCLI(t, "--redis-url", url, "--prefix", prefix, "groups", "remove", "--group", "audit", "--yes")
	if code != 0 {
		t.Fatalf("remove --yes: exit %d: %s", code, errs)
	}
	for _, s := range streams {
		gs, err := rdb.XInfoGroups(ctx, s).Result()
		if err != nil || len(gs) != 1 || gs[0].Name != "workers" {
			t.Errorf("%s after remove: groups %+v (%v), want workers only", s, gs, err)
		}
		if n, _ := rdb.Exists(ctx, wire.RunsKey(s, "audit"), wire.RunsKey(wire.ReplayKey(s), "audit")).Result(); n != 0 {
			t.Errorf("%s after remove: %d runs hashes of group audit left, want 0", s, n)
		}
		if n, _ := rdb.Exists(ctx, wire.RunsKey(s, "workers"), wire.RunsKey(wire.ReplayKey(s), "workers")).Result(); n != 2 {
			t.Errorf("%s after remove: %d runs hashes of group workers, want 2 (kept)", s, n)
		}
	}
	_, errs, code = runCLI(t, "--redis-url", url, "--prefix", prefix, "groups", "remove", "--group", "audit", "--yes")
	if code != 1 || !strings.Contains(errs, "on no stream") {
		t.Errorf("remove of a group that is gone: exit %d, %q; want 1", code, errs)
	}
	_, _, code = runCLI(t, "--redis-url", url, "--prefix", prefix, "groups", "remove")
	if code != 2 {
		t.Errorf("remove without a group: exit %d, want 2", code)
	}
	t.Logf("groups remove: %s", strings.TrimSpace(out))
}

func countGroups(t *testing.T, rdb *redis.Client, key string) int {
	gs, err := rdb.XInfoGroups(context.Background(), key).Result()
	if err != nil {
		t.Fatal(err)
	}
	return len(gs)
}
