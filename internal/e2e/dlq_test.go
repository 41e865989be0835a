package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/kbridge/kbridge/internal/dlqkafka"
	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

// TestDeadLettersNeedKafkaACL: the ingest's user has only the ACLs to read
// its topic and group. Record 0/7 fails and is dead-lettered, but Kafka
// refuses the dead-letter topic to the user (no DESCRIBE, WRITE or CREATE on
// it): partition 0's commit stops at 7 while partition 1 reaches its log
// end, and the ingest says why. Once the user may create and write
// "<topic>.dlq", the dead letter is exported and the commit reaches the log
// end; "kbridge dlq list --from-kafka" through the same login (READ on the
// dead-letter topic) shows it.
func TestDeadLettersNeedKafkaACL(t *testing.T) {
	k := secureKafka(t)
	rd := testenv.NewRedis(t)
	login := k.logins(t)[0]
	topic, group, prefix := testenv.Name(t), testenv.Name(t), testenv.Name(t)
	dlqTopic := wire.DLQTopic(wire.DefaultDLQTopic, topic)
	t.Cleanup(func() { delPrefix(rd.Client(t), prefix) })
	testenv.CreateTopic(t, k.adminBrokers(), topic, 2)
	testenv.Produce(t, k.adminBrokers(), topic, 0, 100)
	ends := testenv.LogEnd(t, k.adminBrokers(), topic, 2)
	k.grantIngest(t, "kbridge", group, topic)
	poison := filepath.Join(t.TempDir(), "poison")
	if err := os.WriteFile(poison, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	redisArgs := []string{"--redis-url", "redis://" + rd.Addr, "--prefix", prefix}
	in := startKbridge(t, "ingest", nil, append(append(append(redisArgs, "ingest", "--topics", topic, "--group", group),
		login.args(k)...), fastIngest...)...)
	l := newLedger(t)
	startKbridge(t, "worker", []string{l.env(), "E2E_POISON=" + poison}, append(redisArgs, "worker", "--exec", execCmd,
		"--discovery-interval", "200ms", "--max-deliveries", "2", "--backoff-min", "10ms", "--backoff-max", "50ms")...)

	status := wire.StatusKey(wire.StreamKey(prefix, topic, 0))
	rdb := rd.Client(t)
	var c map[int]int64
	var said string
	testenv.Eventually(t, 60*time.Second, func() bool {
		c = testenv.Committed(t, k.adminBrokers(), group, topic, 2)
		said = in.line("exporting dead letters to Kafka failed", dlqTopic)
		held, _ := rdb.HGet(context.Background(), status, "dlq_commit_held_at").Result()
		return c[0] == 7 && c[1] == ends[1] && said != "" && held == "7"
	}, "commits %v (want 7 and %d), the ingest did not say why%s", c, ends[1], lastLines(in, 5))
	if n, first := l.missing(t, map[int]int64{1: ends[1]}); n != 0 {
		t.Errorf("partition 1: %d records never handled (first %s)", n, first)
	}
	t.Logf("without ACLs on %s: partition 0 committed at the dead letter (7), partition 1 at its log end %d; the ingest said: %s",
		dlqTopic, ends[1], said)

	k.grantDLQ(t, "kbridge", topic)
	began := time.Now()
	testenv.Eventually(t, 60*time.Second, func() bool {
		c = testenv.Committed(t, k.adminBrokers(), group, topic, 2)
		return c[0] == ends[0] && c[1] == ends[1]
	}, "commits %v after the grant, want the log ends %v%s", c, ends, lastLines(in, 5))
	took := time.Since(began)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var dls []dlqkafka.DeadLetter
	err := dlqkafka.List(ctx, &kafka.Client{Addr: kafka.TCP(k.adminBrokers()...), Timeout: 10 * time.Second, Transport: &kafka.Transport{}},
		dlqTopic, nil, func(d dlqkafka.DeadLetter) bool { dls = append(dls, d); return true })
	if err != nil {
		t.Fatalf("read %s: %v", dlqTopic, err)
	}
	if len(dls) != 1 || dls[0].Err != nil || dls[0].Topic != topic || dls[0].Partition != 0 || dls[0].Offset != 7 {
		t.Fatalf("%s holds %+v, want the dead letter of %s/0 offset 7", dlqTopic, dls, topic)
	}

	cmd := exec.Command(testenv.BuildKbridge(t), append(append(append(redisArgs, "dlq", "list", "--from-kafka", "--topic", topic),
		login.args(k)...), "--json")...)
	cmd.Env = cleanEnv()
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	if err != nil || !strings.Contains(string(out), `"kafka_ref":"`+dlqTopic+`:0@0"`) || !strings.Contains(string(out), `"offset":7`) {
		t.Fatalf("kbridge dlq list --from-kafka through the login: %v\n%s", err, out)
	}
	t.Logf("granted CREATE, WRITE, DESCRIBE, READ on %s: exported and committed to the log end %v in %v; dlq list --from-kafka shows it",
		dlqTopic, ends, took.Round(time.Millisecond))
}

// grantDLQ gives the user what the ingest needs for topic's dead letters
// (docs/operations.md, Security): CREATE and WRITE on "<topic>.dlq" (and
// DESCRIBE, READ for "kbridge dlq --from-kafka").
func (k *kafkaServer) grantDLQ(t *testing.T, user, topic string) {
	t.Helper()
	k.allow(t, user, kafka.ResourceTypeTopic, wire.DLQTopic(wire.DefaultDLQTopic, topic), kafka.ACLOperationTypeCreate,
		kafka.ACLOperationTypeWrite, kafka.ACLOperationTypeDescribe, kafka.ACLOperationTypeRead)
}
