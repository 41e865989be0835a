package bridge

import (
	"context"

	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
)

// Break-it review R-final (issue 7 point 6): the topic-ID check the
// committer makes right before every commit (committer.verify).

func finalCommitter(t *testing.T, topics []string) (*committer, *[]map[tp]int64) {
	in := &Ingest{log: slog.New(slog.DiscardHandler), cfg: Config{FinalCommitTimeout: time.Second},
		topics: newTopicWatch(topics)}
	for _, w := range in.topics.topics {
		w.State = TopicBridged
	}
	c := &committer{in: in, want: map[tp]int64{}, done: map[tp]int64{}}
	sent := &[]map[tp]int64{}
	c.commit = func(_ context.Context, o map[tp]int64) (map[tp]error, error) {
		cp := map[tp]int64{}
		for k, v := range o {
			cp[k] = v
		}
		*sent = append(*sent, cp)
		return nil, nil
	}
	return c, sent
}

// TestFinalReviewCommitCheckTransient: the metadata answer carries a
// topic-level error that is not "gone" (LEADER_NOT_AVAILABLE during a leader
// election; REQUEST_TIMED_OUT), or the request times out as a whole. The
// partition is not committed on that answer, nothing is committed wrongly,
// the topic stays bridged (its next offers are taken), and the next offer
// after a good answer is committed: nothing lost. Held up.
func TestFinalReviewCommitCheckTransient(t *testing.T) {
	c, sent := finalCommitter(t, []string{"a", "b"})
	id := topicID{7}
	a, b := tp{"a", 0}, tp{"b", 0}
	c.vouch(a, id)
	c.vouch(b, id)
	mode := "leader"
	c.check = func(ctx context.Context, topics []string) ([]topicMeta, error) {
		var out []topicMeta
		for _, name := range topics {
			m := topicMeta{Name: name, ID: id, Partitions: 1}
			switch {
			case mode == "timeout":
				<-ctx.Done()
				return nil, fmt.Errorf("kafka metadata: %w", ctx.Err())
			case mode == "leader" && name == "a":
				m = topicMeta{Name: name, Err: kafka.LeaderNotAvailable}
			}
			out = append(out, m)
		}
		return out, nil
	}
	c.offer(a, 100)
	c.offer(b, 100)
	c.flush()
	if len(*sent) != 1 || len((*sent)[0]) != 1 || (*sent)[0][b] != 100 {
		t.Fatalf("with a/0's topic leaderless: requests %v, want one with b/0 only", *sent)
	}
	if s := c.in.topics.state("a"); s != TopicBridged {
		t.Fatalf("a transient topic error dropped the topic: state %q", s)
	}
	mode = "timeout"
	c.offer(a, 150)
	c.offer(b, 150)
	start := time.Now()
	c.flush()
	if len(*sent) != 1 {
		t.Fatalf("a timed-out metadata request still committed: %v", *sent)
	}
	if c.want[a] != 150 || c.want[b] != 150 {
		t.Fatalf("a timed-out check lost the offers: want %v", c.want)
	}
	took := time.Since(start)
	mode = "ok"
	c.offer(a, 150) // the partition offers again at its next observation
	c.flush()
	if off, _ := c.committed(a); off != 150 {
		t.Errorf("a/0 committed at %d after the topic was back, want 150", off)
	}
	if off, _ := c.committed(b); off != 150 {
		t.Errorf("b/0 committed at %d, want 150", off)
	}
	t.Logf("leaderless topic: its partition skipped, the other committed; metadata timeout: nothing sent, offers kept (flush took %v, bounded by FinalCommitTimeout); requests %v", took.Round(time.Millisecond), *sent)
}

// TestFinalReviewCommitCheckManyTopics: 1,000 partitions over 100 topics cost
// one metadata request per flush, naming each topic once; brokers without
// topic IDs (zero IDs, partitions that vouched for none) commit everything.
// Held up.
func TestFinalReviewCommitCheckManyTopics(t *testing.T) {
	var names []string
	for i := range 100 {
		names = append(names, fmt.Sprintf("t%03d", i))
	}
	c, sent := finalCommitter(t, names)
	var calls, asked int
	c.check = func(_ context.Context, topics []string) ([]topicMeta, error) {
		calls++
		asked += len(topics)
		var out []topicMeta
		for _, n := range topics {
			out = append(out, topicMeta{Name: n, Partitions: 10}) // no topic IDs (broker < 2.8)
		}
		return out, nil
	}
	for _, n := range names {
		for p := range 10 {
			c.offer(tp{n, p}, 5)
		}
	}
	start := time.Now()
	c.flush()
	took := time.Since(start)
	t.Logf("1,000 partitions over 100 topics: %d metadata request(s) naming %d topics, %d commit request(s) of %d partitions; flush %v",
		calls, asked, len(*sent), len((*sent)[0]), took)
	if calls != 1 || asked != 100 {
		t.Errorf("metadata requests %d naming %d topics, want 1 naming 100", calls, asked)
	}
	if len(*sent) != 1 || len((*sent)[0]) != 1000 {
		t.Errorf("without topic IDs not everything was committed: %d requests", len(*sent))
	}
}
