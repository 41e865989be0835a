package bridge

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
)

// TestCommitterNeverGoesBack: a lower offer made while a higher commit is in
// flight (a group recreated at 0, a failover to a replica behind) must not be
// committed after it (invariant 3).
func TestCommitterNeverGoesBack(t *testing.T) {
	in := &Ingest{log: slog.New(slog.DiscardHandler), cfg: Config{FinalCommitTimeout: time.Second}}
	var committed []int64
	c := &committer{in: in, want: map[tp]int64{}, done: map[tp]int64{}}
	p := tp{"t", 0}
	c.commit = func(_ context.Context, o map[tp]int64) (map[tp]error, error) {
		committed = append(committed, o[p])
		if len(committed) == 1 {
			c.offer(p, 5) // lower, while 10 is in flight
		}
		return nil, nil
	}
	c.offer(p, 10)
	c.flush()
	c.flush()
	c.offer(p, 7) // lower than what was committed
	c.flush()
	c.offer(p, 12)
	c.flush()
	want := []int64{10, 12}
	if len(committed) != len(want) || committed[0] != want[0] || committed[1] != want[1] {
		t.Errorf("commits %v, want %v", committed, want)
	}
	if off, _ := c.committed(p); off != 12 {
		t.Errorf("committed() = %d, want 12", off)
	}
}

// TestCommitterPerPartition (issue 7 point 5): a partition whose commit the
// broker refuses stays offered, and is retried; the others of the same
// request are committed (and so trimmed). A failed request commits nothing.
func TestCommitterPerPartition(t *testing.T) {
	in := &Ingest{log: slog.New(slog.DiscardHandler), cfg: Config{FinalCommitTimeout: time.Second}}
	c := &committer{in: in, want: map[tp]int64{}, done: map[tp]int64{}}
	bad, good := tp{"t", 0}, tp{"t", 1}
	var requests int
	refuse, down := true, false
	c.commit = func(_ context.Context, o map[tp]int64) (map[tp]error, error) {
		requests++
		if down {
			return nil, errors.New("coordinator unreachable")
		}
		if refuse {
			return map[tp]error{bad: errors.New("[3] Unknown Topic Or Partition")}, nil
		}
		return nil, nil
	}
	c.offer(bad, 10)
	c.offer(good, 20)
	c.flush()
	if off, ok := c.committed(good); !ok || off != 20 {
		t.Errorf("the partition the broker accepted: committed %d (%v), want 20", off, ok)
	}
	if off, ok := c.committed(bad); ok {
		t.Errorf("the refused partition counts as committed at %d", off)
	}
	down = true
	c.offer(good, 30)
	c.flush()
	if off, _ := c.committed(good); off != 20 {
		t.Errorf("a failed request moved the commit to %d, want 20", off)
	}
	down, refuse = false, false
	c.flush()
	if off, _ := c.committed(bad); off != 10 {
		t.Errorf("the refused partition was not retried: committed %d, want 10", off)
	}
	if off, _ := c.committed(good); off != 30 {
		t.Errorf("committed %d, want 30", off)
	}
	if n := in.counters.commitErrs.Load(); n != 3 {
		t.Errorf("commit errors %d, want 3 (one partition, then a request of two)", n)
	}
	t.Logf("%d requests: a refused partition retried, the other committed meanwhile", requests)
}

// TestCommitterChecksTopicID (issue 7 point 6, review finding 1): right
// before a commit the committer reads the topics, and a partition whose
// topic now has another topic ID than the one its stream's records belong
// to, whose topic is gone, or that vouched for no ID while the brokers give
// one, is not committed — its offer dropped — while the others are. A
// failed metadata read commits nothing.
func TestCommitterChecksTopicID(t *testing.T) {
	in := &Ingest{log: slog.New(slog.DiscardHandler), cfg: Config{FinalCommitTimeout: time.Second},
		topics: newTopicWatch([]string{"a", "b", "c", "d"})}
	for _, w := range in.topics.topics {
		w.State = TopicBridged
	}
	old, recreated := topicID{1}, topicID{2}
	metas := map[string]topicMeta{
		"a": {Name: "a", ID: old, Partitions: 1},       // same topic: committed
		"b": {Name: "b", ID: recreated, Partitions: 1}, // recreated
		"c": {Name: "c", Err: kafka.UnknownTopicOrPartition},
		"d": {Name: "d", ID: old, Partitions: 1}, // the partition vouched for none
	}
	metaDown := false
	c := &committer{in: in, want: map[tp]int64{}, done: map[tp]int64{}}
	var sent []map[tp]int64
	c.commit = func(_ context.Context, o map[tp]int64) (map[tp]error, error) {
		sent = append(sent, o)
		return nil, nil
	}
	var asked [][]string
	c.check = func(_ context.Context, topics []string) ([]topicMeta, error) {
		asked = append(asked, topics)
		if metaDown {
			return nil, errors.New("metadata: broker unreachable")
		}
		var out []topicMeta
		for _, name := range topics {
			out = append(out, metas[name])
		}
		return out, nil
	}
	a, b, cc, d := tp{"a", 0}, tp{"b", 0}, tp{"c", 0}, tp{"d", 0}
	c.vouch(a, old)
	c.vouch(b, old)
	c.vouch(cc, old)

	metaDown = true
	for _, p := range []tp{a, b, cc, d} {
		c.offer(p, 300)
	}
	c.flush()
	if len(sent) != 0 {
		t.Fatalf("committed %v without reading the topics' IDs", sent)
	}
	metaDown = false
	c.flush()
	if len(sent) != 1 || len(sent[0]) != 1 || sent[0][a] != 300 {
		t.Fatalf("commit requests %v, want one with only a/0 at 300", sent)
	}
	for _, p := range []tp{b, cc, d} {
		if off, ok := c.committed(p); ok {
			t.Errorf("%v committed at %d", p, off)
		}
		if _, ok := c.want[p]; ok {
			t.Errorf("%v: the refused offer is still queued", p)
		}
	}
	if got := in.topics.id("b"); got != recreated {
		t.Errorf("the topic watch was not told b's new ID: %v, want %v", got, recreated)
	}
	if s := in.topics.state("c"); s != TopicMissing {
		t.Errorf("the topic watch was not told c is gone: state %q", s)
	}
	c.offer(cc, 400) // c is not bridged now: no offer taken
	if _, ok := c.want[cc]; ok {
		t.Error("an offer for a topic that is gone was taken")
	}
	t.Logf("metadata reads %v; requests %v", asked, sent)
}

// TestCommitterForget (issue 7 point 6, review finding 3): after forget —
// the partition starts afresh on a recreated topic — the old topic's commit
// neither holds lower offers back nor is reported, and a commit in flight
// across the forget is not remembered.
func TestCommitterForget(t *testing.T) {
	in := &Ingest{log: slog.New(slog.DiscardHandler), cfg: Config{FinalCommitTimeout: time.Second}}
	c := &committer{in: in, want: map[tp]int64{}, done: map[tp]int64{}}
	p := tp{"t", 0}
	forgetInFlight := false
	c.commit = func(_ context.Context, o map[tp]int64) (map[tp]error, error) {
		if forgetInFlight {
			c.forget(p)
		}
		return nil, nil
	}
	c.offer(p, 1000)
	c.flush()
	if off, _ := c.committed(p); off != 1000 {
		t.Fatalf("committed %d, want 1000", off)
	}
	c.forget(p)
	if off, ok := c.committed(p); ok {
		t.Errorf("after forget, committed() = %d", off)
	}
	c.offer(p, 300)
	forgetInFlight = true
	c.flush()
	if off, ok := c.committed(p); ok {
		t.Errorf("a commit in flight across forget is remembered: committed() = %d", off)
	}
	forgetInFlight = false
	c.offer(p, 300)
	c.flush()
	if off, _ := c.committed(p); off != 300 {
		t.Errorf("committed %d after forget, want 300 (the old 1000 must not hold it back)", off)
	}
}
