package bridge

import (
	"context"
	"strings"
	"testing"

	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/tracker"
)

// TestOutOfRangeWithinLog (issue 7 point 6): an OFFSET_OUT_OF_RANGE for an
// offset inside [log start, log end) — a replica behind, a leader change —
// is not retention loss: the position stays (and the fetch is retried), no
// records are skipped; above the log end the partition stalls. On main any
// offset at or below the log end was taken for retention loss and the
// position moved to the log start.
func TestOutOfRangeWithinLog(t *testing.T) {
	brokers := testenv.Kafka(t)
	topic := testenv.Name(t)
	testenv.CreateTopic(t, brokers, topic, 1)
	testenv.Produce(t, brokers, topic, 0, 10)
	in, err := New(Config{Brokers: brokers, Topics: []string{topic}, Redis: testenv.NewRedis(t).Client(t)})
	if err != nil {
		t.Fatal(err)
	}
	c := &committer{in: in, want: map[tp]int64{}, done: map[tp]int64{}}
	p := in.newPartition(topic, 0, -1, c)
	p.tr = tracker.NewPartition(tracker.None, 4)
	ctx := context.Background()

	p.next = 5
	err = p.outOfRange(ctx)
	if err == nil || p.next != 5 || p.stalled != "" {
		t.Fatalf("offset 5 in a log [0, 10): err %v, position %d, stalled %q; want an error to retry, position 5, no stall", err, p.next, p.stalled)
	}
	t.Logf("offset 5 within [0, 10): %v", err)

	p.next = 50
	if err := p.outOfRange(ctx); err != nil || p.stallCause != StallBeyondLogEnd || !strings.Contains(p.stalled, "above the log end 10") {
		t.Fatalf("offset 50 beyond the log end 10: err %v, stall %q (%s)", err, p.stallCause, p.stalled)
	}
}
