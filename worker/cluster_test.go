package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/bridge"
	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

// TestRedisCluster runs the ingest and a worker on a real Redis Cluster:
// 5,000 records of an 8-partition topic, whose streams sit on at least two
// masters, are all handled once and acknowledged, and the Kafka commits reach
// the log end; `kbridge status --json --redis-cluster` reads the same.
//
//	bash scripts/redis-cluster.sh start
//	REDIS_CLUSTER_ADDRS=127.0.0.1:17000,127.0.0.1:17001,127.0.0.1:17002 go test -race -run TestRedisCluster -v ./worker/
//	bash scripts/redis-cluster.sh stop
func TestRedisCluster(t *testing.T) {
	env := os.Getenv("REDIS_CLUSTER_ADDRS")
	if env == "" {
		t.Skip("needs a Redis Cluster: run `bash scripts/redis-cluster.sh start`, then set " +
			"REDIS_CLUSTER_ADDRS=127.0.0.1:17000,127.0.0.1:17001,127.0.0.1:17002 (and KAFKA_BROKERS for a real Kafka)")
	}
	addrs := strings.Split(env, ",")
	ctx := context.Background()
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	t.Cleanup(func() { rdb.Close() })
	if err := rdb.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return c.Ping(ctx).Err() }); err != nil {
		t.Fatalf("Redis Cluster %s: %v", env, err)
	}
	brokers := testenv.Kafka(t)
	t.Logf("Redis Cluster %s; %s", env, strings.SplitN(testenv.String(), ",", 2)[0])

	const partitions, records = 8, 5000
	topic, group, prefix := testenv.Name(t), testenv.Name(t), testenv.Name(t)
	testenv.CreateTopic(t, brokers, topic, partitions)

	// The streams spread over the masters; Slot agrees with the cluster.
	var streams []string
	byNode := map[string][]int{}
	for p := range partitions {
		s := wire.StreamKey(prefix, topic, p)
		streams = append(streams, s)
		if want, err := rdb.ClusterKeySlot(ctx, s).Result(); err != nil || int(want) != wire.Slot(s) {
			t.Fatalf("CLUSTER KEYSLOT %s = %d, %v; wire.Slot = %d", s, want, err, wire.Slot(s))
		}
		m, err := rdb.MasterForKey(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		byNode[m.Options().Addr] = append(byNode[m.Options().Addr], p)
	}
	if len(byNode) < 2 {
		t.Fatalf("all %d streams on one master %v: the test would not cross slots", partitions, byNode)
	}
	t.Cleanup(func() { // one key at a time: a cluster refuses a cross-slot DEL
		for _, s := range streams {
			for _, k := range []string{s, wire.DLQKey(s), wire.ReplayKey(s), wire.StatusKey(s)} {
				rdb.Del(context.Background(), k)
			}
		}
		rdb.Del(context.Background(), wire.RegistryKey(prefix))
	})
	testenv.Produce(t, brokers, topic, 0, records)

	in, err := bridge.New(bridge.Config{
		Brokers:        brokers,
		Topics:         []string{topic},
		Group:          group,
		Redis:          rdb,
		Prefix:         prefix,
		CommitInterval: 200 * time.Millisecond,
		Logger:         testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	ictx, stopIngest := context.WithCancel(ctx)
	ingestDone := make(chan error, 1)
	go func() { ingestDone <- in.Run(ictx) }()
	t.Cleanup(func() {
		stopIngest()
		if err := <-ingestDone; err != nil {
			t.Errorf("ingest Run = %v", err)
		}
	})

	got := newSeen()
	w := mustNew(t, Config{
		Redis:             rdb,
		Prefix:            prefix,
		Concurrency:       16,
		VisibilityTimeout: 10 * time.Second,
		AckInterval:       10 * time.Millisecond,
		DiscoveryInterval: 200 * time.Millisecond,
		Logger:            testLogger(t),
		Handler: func(ctx context.Context, m *Message) error {
			got.add(m)
			return nil
		},
	})
	if !w.perSlot {
		t.Fatal("worker on a *redis.ClusterClient does not read per slot")
	}
	start := time.Now()
	stopWorker := running(t, w)

	end := testenv.LogEnd(t, brokers, topic, partitions)
	var committed map[int]int64
	testenv.Eventually(t, 90*time.Second, func() bool {
		committed = testenv.Committed(t, brokers, group, topic, partitions)
		for p, e := range end {
			if committed[p] != e {
				return false
			}
		}
		return true
	}, "commits %v, want the log end %v (handled %d of %d)", func() any { return committed }(), end, got.distinct(), records)
	elapsed := time.Since(start)

	if got.distinct() != records {
		t.Errorf("handled %d distinct records, want %d", got.distinct(), records)
	}
	if got.total() != got.distinct() {
		t.Errorf("%d handler calls for %d records: duplicates without any failure", got.total(), got.distinct())
	}
	for _, s := range streams {
		if p, err := rdb.XPending(ctx, s, DefaultGroup).Result(); err != nil || p.Count != 0 {
			t.Errorf("%s: XPENDING = %+v, %v; want nothing pending after the commits reached the log end", s, p, err)
		}
	}
	var sum int64
	for _, e := range end {
		sum += e
	}
	nodes := make([]string, 0, len(byNode))
	for n, ps := range byNode {
		nodes = append(nodes, fmt.Sprintf("%s=%v", n, ps))
	}
	sort.Strings(nodes)
	st := w.Stats()
	t.Logf("%d records over %d partitions on %d masters (%s): handled and committed to the log end (%d) in %v (%.0f records/s); worker stats processed=%d acked=%d reclaimed=%d",
		records, partitions, len(byNode), strings.Join(nodes, " "), sum, elapsed.Round(time.Millisecond),
		float64(records)/elapsed.Seconds(), st.Processed, st.Acked, st.Reclaimed)

	// kbridge status --json on the cluster.
	bin := testenv.BuildKbridge(t)
	url := "redis://" + addrs[0]
	for i, a := range addrs[1:] {
		url += map[bool]string{true: "?", false: "&"}[i == 0] + "addr=" + a
	}
	cmd := exec.Command(bin, "--redis-url", url, "--redis-cluster", "--prefix", prefix,
		"status", "--brokers", strings.Join(brokers, ","), "--group", group, "--topics", topic, "--json")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kbridge status --json --redis-cluster: %v\n%s", err, out)
	}
	var rep struct {
		Partitions []struct {
			Partition    int   `json:"partition"`
			LogEnd       int64 `json:"log_end"`
			Committed    int64 `json:"committed"`
			StreamExists bool  `json:"stream_exists"`
			Top          int64 `json:"stream_top"`
			Pending      int64 `json:"pending"`
			Backlog      int64 `json:"backlog"`
		} `json:"partitions"`
		Totals struct {
			KafkaLag int64 `json:"kafka_lag"`
			Backlog  int64 `json:"backlog"`
			Pending  int64 `json:"pending"`
		} `json:"totals"`
		Errors []string `json:"errors"`
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("status output: %v\n%s", err, out)
	}
	if len(rep.Errors) > 0 || len(rep.Partitions) != partitions || rep.Totals.KafkaLag != 0 || rep.Totals.Pending != 0 {
		t.Fatalf("kbridge status: %d partitions, totals %+v, errors %q; want %d, no lag, nothing pending\n%s",
			len(rep.Partitions), rep.Totals, rep.Errors, partitions, out)
	}
	for _, p := range rep.Partitions {
		if !p.StreamExists || p.Committed != end[p.Partition] || p.Top != end[p.Partition]-1 {
			t.Errorf("status of partition %d: %+v, want the stream's top %d and the commit at the log end %d", p.Partition, p, end[p.Partition]-1, end[p.Partition])
		}
	}
	t.Logf("kbridge status --json --redis-cluster: %d partitions, totals %+v", len(rep.Partitions), rep.Totals)

	if err := stopWorker(); err != nil {
		t.Errorf("worker Run = %v", err)
	}

	// One master that may evict is enough for the ingest to refuse to start.
	m, err := rdb.MasterForKey(ctx, streams[len(streams)-1])
	if err != nil {
		t.Fatal(err)
	}
	if err := m.ConfigSet(ctx, "maxmemory-policy", "allkeys-lru").Err(); err != nil {
		t.Fatal(err)
	}
	defer m.ConfigSet(context.Background(), "maxmemory-policy", "noeviction")
	in2, err := bridge.New(bridge.Config{Brokers: brokers, Topics: []string{topic}, Group: group + "-2", Redis: rdb, Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := in2.Run(rctx); !errors.Is(err, bridge.ErrEvictionPolicy) {
		t.Errorf("ingest with master %s on allkeys-lru: Run = %v, want ErrEvictionPolicy", m.Options().Addr, err)
	}
}
