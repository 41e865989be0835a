package bridge_test

import (
	"context"
	"math/rand"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kbridge/kbridge/internal/kfetch"
	"github.com/kbridge/kbridge/internal/testenv"
)

// TestFetchReviewTxnKilledAndStraddling (invariant 10, issue 7 point 3),
// real Kafka: on 3 partitions, a transactional producer begins a
// transaction on partitions 0 and 1 and is then abandoned ("killed"): its
// 3 s transaction timeout makes the coordinator abort it (within
// transaction.abort.timed.out.transaction.cleanup.interval.ms, 10 s).
// Meanwhile a second producer writes 80 small transactions, committed or
// aborted at random, each of 1-3 separate batches of ~300 bytes on random
// partitions, interleaved with plain records; --fetch-max-bytes is the
// minimum (1 KiB), so aborted transactions straddle fetch boundaries (a
// fetch brings about 3 batches). Promised: while the killed transaction is
// open, partitions 0 and 1 commit no further than its first record; after
// it is aborted, 0 aborted records delivered, 0 committed ones lost, every
// commit = log end, no hot loop at the tails; read_uncommitted delivers
// every record.
func TestFetchReviewTxnKilledAndStraddling(t *testing.T) {
	if !testenv.RealKafka() {
		t.Skip("needs a real broker's transaction timeout (KAFKA_BROKERS)")
	}
	e := newEnv(t, 3)
	plainTopic := testenv.Name(t) + "-plain"
	testenv.CreateTopic(t, e.brokers, plainTopic, 1)
	testenv.Produce(t, e.brokers, plainTopic, 0, 10)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	fate := map[int]map[int64]string{}
	plain := newTxnWriter(t, e.brokers, e.topic, "", fate)
	b := newTxnWriter(t, e.brokers, e.topic, e.topic+"-b", fate)
	killedCl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.DefaultProduceTopic(e.topic),
		kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.TransactionalID(e.topic+"-killed"),
		kgo.TransactionTimeout(3*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(killedCl.Close)
	killed := &txnWriter{t: t, cl: killedCl, fate: fate}

	big := func(w *txnWriter, n int, parts ...int) {
		// records of ~300 bytes, one ProduceSync (one batch) per record
		for _, p := range parts {
			for range n {
				r := &kgo.Record{Partition: int32(p), Value: []byte(strings.Repeat("x", 300))}
				if err := w.cl.ProduceSync(ctx, r).FirstErr(); err != nil {
					t.Fatalf("produce: %v", err)
				}
				w.open = append(w.open, r)
			}
		}
	}
	plain.plain(ctx, 3, 0, 1, 2)
	// the killed producer's transaction: begun, never ended
	if err := killedCl.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	big(killed, 3, 0, 1)
	killed.mark(killed.open, "aborted") // the timeout will abort it
	firstOpen := map[int]int64{}
	for _, r := range killed.open {
		if o, ok := firstOpen[int(r.Partition)]; !ok || r.Offset < o {
			firstOpen[int(r.Partition)] = r.Offset
		}
	}
	rng := rand.New(rand.NewSource(7))
	txns := 0
	for i := range 80 {
		if err := b.cl.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		b.open = nil
		for range 1 + rng.Intn(3) {
			big(b, 1, rng.Intn(3))
		}
		commit := rng.Intn(2) == 0
		b.end(ctx, commit)
		txns++
		if i%7 == 0 {
			plain.plain(ctx, 1, rng.Intn(3))
		}
	}
	count := func(fates ...string) int {
		n := 0
		for _, m := range fate {
			for _, f := range m {
				for _, g := range fates {
					if f == g {
						n++
					}
				}
			}
		}
		return n
	}
	t.Logf("written: %d plain, %d committed, %d aborted records (%d of the killed producer's open transaction) in %d transactions",
		count("plain"), count("committed"), count("aborted"), len(killed.open), txns)

	cfg := e.config(t)
	cfg.Topics = []string{e.topic, plainTopic}
	cfg.FetchMaxBytes = 1024
	in := startIngest(t, cfg)
	l := e.startWork(t, 0)

	// While the killed transaction is open (until the coordinator aborts
	// it), partitions 0 and 1 must not commit past its first record.
	held := 0
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		end := testenv.LogEnd(t, e.brokers, e.topic, e.partitions)
		c := testenv.Committed(t, e.brokers, e.group, e.topic, e.partitions)
		if sameOffsets(c, end) {
			break
		}
		for _, p := range []int{0, 1} {
			if c[p] > firstOpen[p] && !lsoPast(t, e, p, firstOpen[p]) {
				t.Errorf("partition %d committed %d past the open transaction at %d", p, c[p], firstOpen[p])
			}
		}
		held++
		time.Sleep(200 * time.Millisecond)
	}
	end := testenv.LogEnd(t, e.brokers, e.topic, e.partitions)
	testenv.Eventually(t, 60*time.Second, func() bool {
		return sameOffsets(testenv.Committed(t, e.brokers, e.group, e.topic, e.partitions), end)
	}, "commits %v did not reach the log ends %v after the killed transaction timed out",
		later(func() any { return testenv.Committed(t, e.brokers, e.group, e.topic, e.partitions) }), end)
	rates := tailFetchRates(t, in, 2*time.Second)
	plainRate := rates[tp{plainTopic, 0}]
	for p := range e.partitions {
		if r := rates[tp{e.topic, p}]; r > 2*plainRate+1 {
			t.Errorf("partition %d fetched %.1f times/s at its tail, a plain topic's %.1f: spinning", p, r, plainRate)
		}
	}
	aborted, lost, stray, delivered := 0, 0, 0, 0
	l.mu.Lock()
	for p := range e.partitions {
		for off, f := range fate[p] {
			n := l.seen[p][off]
			delivered += n
			switch {
			case f == "aborted" && n > 0:
				aborted++
			case f != "aborted" && n == 0:
				lost++
			}
		}
		for off := range l.seen[p] {
			if _, ok := fate[p][off]; !ok {
				stray++
			}
		}
	}
	l.mu.Unlock()
	s := in.Stats()
	t.Logf("read_committed, --fetch-max-bytes 1024: %d delivered, %d aborted delivered, %d committed/plain lost, %d offsets delivered that hold no record; skipped %d aborted records and %d markers; commits = log ends %v (checked %d times while the killed transaction was open); tail fetches/s %v (plain topic %.1f)",
		delivered, aborted, lost, stray, s.AbortedSkipped, s.MarkersSkipped, end, held, rates, plainRate)
	if aborted != 0 || lost != 0 || stray != 0 {
		t.Errorf("%d aborted records delivered, %d committed lost, %d non-records delivered", aborted, lost, stray)
	}
	if want := int64(count("aborted")); s.AbortedSkipped != want {
		t.Errorf("skipped %d aborted records, %d were aborted", s.AbortedSkipped, want)
	}

	cfg2 := e.config(t)
	cfg2.Group, cfg2.Prefix, cfg2.Isolation, cfg2.FetchMaxBytes = e.group+"-ru", e.prefix+"-ru", kfetch.ReadUncommitted, 1024
	startIngest(t, cfg2)
	e2 := *e
	e2.group, e2.prefix = cfg2.Group, cfg2.Prefix
	l2 := e2.startWork(t, 0)
	all := count("plain", "committed", "aborted")
	testenv.Eventually(t, 60*time.Second, func() bool { return l2.total() >= all }, "read_uncommitted: processed %v of %d", later(func() any { return l2.total() }), all)
	testenv.Eventually(t, 30*time.Second, func() bool {
		return sameOffsets(testenv.Committed(t, e.brokers, cfg2.Group, e.topic, e.partitions), end)
	}, "read_uncommitted commits %v did not reach the log ends %v",
		later(func() any { return testenv.Committed(t, e.brokers, cfg2.Group, e.topic, e.partitions) }), end)
	t.Logf("read_uncommitted: %d of %d data records delivered, commits = log ends", l2.total(), all)
}

// lsoPast reports whether partition p's last stable offset is past off (the
// open transaction there ended), read with a read_committed ListOffsets.
func lsoPast(t *testing.T, e *env, p int, off int64) bool {
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{
		e.topic: {int32(p): kgo.NewOffset().At(off)}}), kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.FetchMaxWait(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	fs := cl.PollFetches(ctx)
	past := false
	fs.EachPartition(func(fp kgo.FetchTopicPartition) {
		if fp.LastStableOffset > off {
			past = true
		}
	})
	return past
}
