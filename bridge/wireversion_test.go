package bridge_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/kbridge/kbridge/bridge"
	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

// TestWireVersionPublished: the ingest writes the wire contract version
// ("<prefix>:wire" version) at start-up, where workers check it, and refuses
// to start over a newer version (it would lower it under newer workers).
func TestWireVersionPublished(t *testing.T) {
	e := newEnv(t, 1)
	ctx := context.Background()
	startIngest(t, e.config(t))
	testenv.Eventually(t, 30*time.Second, func() bool {
		v, _ := e.rdb.HGet(ctx, wire.VersionKey(e.prefix), wire.FieldVersion).Result()
		return v == "1"
	}, "the ingest did not write %s version 1", wire.VersionKey(e.prefix))
	if err := wire.CheckVersion(ctx, e.rdb, e.prefix); err != nil {
		t.Fatalf("CheckVersion after the ingest started: %v", err)
	}

	e2 := newEnv(t, 1)
	if err := e2.rdb.HSet(ctx, wire.VersionKey(e2.prefix), wire.FieldVersion, "2").Err(); err != nil {
		t.Fatal(err)
	}
	in, err := bridge.New(e2.config(t))
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err = in.Run(rctx)
	if !errors.Is(err, wire.ErrVersion) {
		t.Fatalf("Run over wire version 2: want an error wrapping wire.ErrVersion, got %v", err)
	}
	t.Logf("ingest over version 2 refused to start: %v", err)
}
