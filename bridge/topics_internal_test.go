package bridge

import (
	"errors"
	"log/slog"
	"testing"

	"github.com/segmentio/kafka-go"
)

// TestTopicDroppedAtFirstUnknown (issue 7 point 1, review finding 2): a
// bridged topic is dropped from the subscription at the first answer that
// says it does not exist — a member that kept it one poll longer made the
// group's leader recreate it (auto-creation) — and a change of its topic ID
// is taken; a transient error keeps it.
func TestTopicDroppedAtFirstUnknown(t *testing.T) {
	in := &Ingest{log: slog.New(slog.DiscardHandler)}
	w := newTopicWatch([]string{"a", "b"})
	in.topics = w
	w.apply(in, []topicMeta{{Name: "a", ID: topicID{1}, Partitions: 2}, {Name: "b", ID: topicID{3}, Partitions: 1}}, nil, false)
	if got := w.bridged(); len(got) != 2 {
		t.Fatalf("bridged %v, want [a b]", got)
	}
	changed := w.wait()
	w.apply(in, []topicMeta{{Name: "a", Err: kafka.LeaderNotAvailable}, {Name: "b", Err: kafka.UnknownTopicOrPartition}}, nil, false)
	if got := w.bridged(); len(got) != 1 || got[0] != "a" {
		t.Errorf("after one unknown answer for b and a transient error for a: bridged %v, want [a]", got)
	}
	select {
	case <-changed:
	default:
		t.Error("the change was not signalled: the member would not rejoin without b")
	}
	// learn (the committer's check) takes a new ID of a bridged topic, and
	// never bridges a topic by itself.
	w.learn(in, []topicMeta{{Name: "a", ID: topicID{2}, Partitions: 2}, {Name: "b", ID: topicID{4}, Partitions: 1}})
	if got := w.id("a"); got != (topicID{2}) {
		t.Errorf("a's ID %v after learn, want the new one", got)
	}
	if s := w.state("b"); s != TopicMissing {
		t.Errorf("learn bridged b (state %q): READ is checked only by pollTopics", s)
	}
}

// TestJoinNotSentWithTopicGone: the first balancer's UserData (kafka-go
// calls it right before each JoinGroup) runs the view's check once per join
// and fails the join when the check fails.
func TestJoinNotSentWithTopicGone(t *testing.T) {
	fail, checks := false, 0
	v := &leaderView{check: func() error {
		checks++
		if fail {
			return errors.New("topic gone")
		}
		return nil
	}}
	bs := v.balancers()
	for _, b := range bs {
		if _, err := b.UserData(); err != nil {
			t.Fatalf("%s: %v", b.ProtocolName(), err)
		}
	}
	if checks != 1 {
		t.Errorf("%d checks for one join, want 1", checks)
	}
	fail = true
	if _, err := bs[0].UserData(); err == nil {
		t.Error("the join was not failed with a topic gone")
	}
}
