package bridge_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/kbridge/kbridge/bridge"
	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

// TestBatchBeyondLimitStalls: a record batch that decompresses beyond
// --fetch-batch-max-bytes (1 MiB here, a 2 MiB lz4 record) stalls its
// partition with cause batch_too_large — in Stats, in the status hash, one
// ERROR naming the offset and sizes — instead of being retried for ever in
// silence: the records below it are bridged, none above it, the commit
// never passes it, and no further fetch error is counted while it stays
// stalled. Restarted with the default limit (the runbook), the ingest
// bridges the record and every one behind it, none lost, none twice.
func TestBatchBeyondLimitStalls(t *testing.T) {
	e := newEnv(t, 1)
	sizes := make([]int, 0, 21)
	for range 10 {
		sizes = append(sizes, 1<<10)
	}
	sizes = append(sizes, 2<<20) // offset 10: 2 MiB of zeros, a few KiB in lz4
	for range 10 {
		sizes = append(sizes, 1<<10)
	}
	writeSized(t, e.brokers, e.topic, 0, kafka.Lz4, sizes...)
	end := testenv.LogEnd(t, e.brokers, e.topic, 1)

	logs := &lockedBuffer{}
	cfg := e.config(t)
	cfg.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(logs, testWriter{t}), &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg.FetchBatchMaxBytes = 1 << 20
	in := startIngest(t, cfg)
	l := e.startWork(t, 0)

	var st bridge.PartitionStatus
	testenv.Eventually(t, 30*time.Second, func() bool {
		for _, p := range in.Stats().Partitions {
			st = p
		}
		return st.StallCause != ""
	}, "the partition did not stall: %+v", later(func() any { return in.Stats().Partitions }))
	if st.StallCause != bridge.StallBatchTooLarge || !strings.Contains(st.Stalled, "offset 10 ") || !strings.Contains(st.Stalled, "--fetch-batch-max-bytes") {
		t.Errorf("stall cause %q: %q; want %q naming offset 10 and --fetch-batch-max-bytes", st.StallCause, st.Stalled, bridge.StallBatchTooLarge)
	}
	testenv.Eventually(t, 10*time.Second, func() bool {
		h, _ := e.rdb.HGetAll(context.Background(), wire.StatusKey(e.stream(0))).Result()
		return bridge.ParseStatus(h).StallCause == bridge.StallBatchTooLarge
	}, "the status hash does not carry the stall")
	testenv.Eventually(t, 10*time.Second, func() bool { return l.total() >= 10 }, "the 10 records below the big one were not processed: %d", later(func() any { return l.total() }))

	// Stalled for good: over several poll intervals and commit intervals,
	// no fetch again, no record above it, no commit past it, one log line.
	errs0, t0 := in.Stats().KafkaErrors, time.Now()
	testenv.Eventually(t, 10*time.Second, func() bool { return time.Since(t0) >= 2*time.Second }, "")
	s := in.Stats()
	committed := testenv.Committed(t, e.brokers, e.group, e.topic, 1)[0]
	lines := strings.Count(logs.String(), "partition stalled: the record batch at offset 10")
	t.Logf("%s: --fetch-batch-max-bytes 1 MiB, a 2 MiB lz4 record at offset 10 of %d: stalled (%s), processed %d, committed %d, Kafka errors %d then %d 2s later, %d ERROR line(s): %s",
		testenv.String(), end[0], st.StallCause, l.total(), committed, errs0, s.KafkaErrors, lines, st.Stalled)
	if l.total() != 10 {
		t.Errorf("%d records processed, want the 10 below the batch", l.total())
	}
	if committed > 10 {
		t.Errorf("commit %d passed the batch at offset 10 that was never bridged", committed)
	}
	if errs0 != 1 || s.KafkaErrors != errs0 {
		t.Errorf("fetch errors %d then %d: want one, then no retry while stalled", errs0, s.KafkaErrors)
	}
	if lines != 1 || !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "limit_bytes=1048576") {
		t.Errorf("want one ERROR line naming the limit, got %d:\n%s", lines, logs.String())
	}

	// The runbook: restart with a higher limit (here the default).
	in.stop(t)
	cfg.FetchBatchMaxBytes = 0
	in2 := startIngest(t, cfg)
	lost, dups := e.waitDone(t, l, time.Minute)
	for _, p := range in2.Stats().Partitions {
		if p.Stalled != "" {
			t.Errorf("still stalled after the restart with the default limit: %s", p.Stalled)
		}
	}
	t.Logf("restarted with the default --fetch-batch-max-bytes: processed %d of %d, lost %d, duplicates %d", l.total(), end[0], lost, dups)
	if dups != 0 {
		t.Errorf("%d records processed twice", dups)
	}
}
