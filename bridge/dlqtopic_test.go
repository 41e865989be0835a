package bridge_test

import (
	"context"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/kbridge/kbridge/internal/testenv"
)

// TestDeadLetterTopicCreatedLikeItsSource: the dead-letter topic the
// ingest creates has its source topic's partition count and replication
// factor — not the broker's default replication, often 1 — and
// cleanup.policy=delete whatever the broker's default (compaction would keep
// one dead letter per key). "source RF 2 of 3 brokers" runs on an
// in-process cluster of 3 brokers whose default replication is 3, so that
// the two cannot be confused; "this Kafka" on the test's Kafka (real or
// stand-in).
func TestDeadLetterTopicCreatedLikeItsSource(t *testing.T) {
	for _, tt := range []struct {
		name        string
		brokers     func(t *testing.T) []string
		replication int
	}{
		{"this Kafka", func(t *testing.T) []string { return testenv.Kafka(t) }, 1},
		{"source RF 2 of 3 brokers", func(t *testing.T) []string {
			c, err := kfake.NewCluster(kfake.NumBrokers(3), kfake.GroupMinSessionTimeout(500*time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c.Close)
			return c.ListenAddrs()
		}, 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			const parts = 3
			brokers := tt.brokers(t)
			name := testenv.Name(t)
			e := &env{brokers: brokers, redis: testenv.NewRedis(t), partitions: parts, topic: name, group: "g-" + name, prefix: "kbt-" + name}
			e.rdb = e.redis.Client(t)
			ctx := context.Background()
			cl := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second, Transport: &kafka.Transport{}}
			res, err := cl.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
				Topic: e.topic, NumPartitions: parts, ReplicationFactor: tt.replication}}})
			if err != nil || res.Errors[e.topic] != nil {
				t.Fatalf("create %s: %v %v", e.topic, err, res)
			}
			testenv.Produce(t, brokers, e.topic, 0, 60)
			in := startIngest(t, e.config(t))
			handled, poison := newLedger(), newLedger()
			e.startPoisonWorker(t, handled, poison)
			testenv.Eventually(t, 60*time.Second, func() bool {
				return poison.total() == poisonCount(0, 60) && len(e.kafkaDLQ(t)) == poison.total() && e.allCommitted(t)
			}, "poison %d, in Kafka %d, stats %+v", poison.total(), len(e.kafkaDLQ(t)), in.DLQStats())
			// A transport of its own: one that answered before caches a
			// metadata without the dead-letter topic.
			cl = &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second, Transport: &kafka.Transport{}}
			md, err := cl.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{e.dlqTopic()}})
			if err != nil || len(md.Topics) != 1 || md.Topics[0].Error != nil {
				t.Fatalf("metadata of %s: %v %+v", e.dlqTopic(), err, md)
			}
			got := md.Topics[0]
			if len(got.Partitions) != parts {
				t.Errorf("%s has %d partitions, want %d", e.dlqTopic(), len(got.Partitions), parts)
			}
			for _, p := range got.Partitions {
				if len(p.Replicas) != tt.replication {
					t.Errorf("%s partition %d has %d replicas, want %d (the source's)", e.dlqTopic(), p.ID, len(p.Replicas), tt.replication)
				}
			}
			cfg, err := cl.DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{Resources: []kafka.DescribeConfigRequestResource{{
				ResourceType: kafka.ResourceTypeTopic, ResourceName: e.dlqTopic(), ConfigNames: []string{"cleanup.policy"}}}})
			policy := "?"
			if err == nil && len(cfg.Resources) == 1 {
				for _, c := range cfg.Resources[0].ConfigEntries {
					if c.ConfigName == "cleanup.policy" {
						policy = c.ConfigValue
					}
				}
			}
			if policy != "delete" {
				t.Errorf("%s cleanup.policy %q (%v), want delete", e.dlqTopic(), policy, err)
			}
			t.Logf("%s created by the ingest: %d partitions, %d replicas each, cleanup.policy=%s (source: %d partitions, replication %d)",
				e.dlqTopic(), len(got.Partitions), len(got.Partitions[0].Replicas), policy, parts, tt.replication)
		})
	}
}
