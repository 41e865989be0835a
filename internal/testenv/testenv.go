// Package testenv gives each test a Kafka and a Redis: the real ones named by
// KAFKA_BROKERS and REDIS_ADDR (scripts/test.sh starts them), otherwise
// embedded stand-ins in the test process — franz-go's kfake, which speaks the
// Kafka protocol, and miniredis. Tests that only make sense on real processes
// (SIGKILL, restarting Redis) call RequireReal and skip without them.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
)

// RealKafka reports whether KAFKA_BROKERS names a real broker.
func RealKafka() bool { return os.Getenv("KAFKA_BROKERS") != "" }

// RealRedis reports whether REDIS_ADDR names a real Redis.
func RealRedis() bool { return os.Getenv("REDIS_ADDR") != "" }

// RequireReal skips the test unless both real services are configured.
func RequireReal(t testing.TB, why string) {
	t.Helper()
	if !RealKafka() || !RealRedis() {
		t.Skipf("needs real Kafka and Redis (%s): set KAFKA_BROKERS and REDIS_ADDR, or run scripts/test.sh", why)
	}
}

// Kafka returns the brokers of a Kafka cluster for the test: KAFKA_BROKERS, or
// a fresh in-process kfake cluster closed when the test ends.
func Kafka(t testing.TB) []string {
	t.Helper()
	if v := os.Getenv("KAFKA_BROKERS"); v != "" {
		return strings.Split(v, ",")
	}
	c, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.AllowAutoTopicCreation(),
		kfake.GroupMinSessionTimeout(500*time.Millisecond),
	)
	if err != nil {
		t.Fatalf("start kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()
}

// Redis is the Redis a test talks to.
type Redis struct {
	Addr string
	// Mini is the embedded server, nil on a real Redis.
	Mini *miniredis.Miniredis
}

// Client returns a new client of r, closed when the test ends.
func (r *Redis) Client(t testing.TB) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: r.Addr, ContextTimeoutEnabled: true})
	t.Cleanup(func() { c.Close() })
	return c
}

// NewRedis returns REDIS_ADDR, or a fresh miniredis closed when the test ends.
// On a shared real Redis, tests keep apart by using Prefix for their keys.
func NewRedis(t testing.TB) *Redis {
	t.Helper()
	if v := os.Getenv("REDIS_ADDR"); v != "" {
		return &Redis{Addr: v}
	}
	m := miniredis.RunT(t)
	return &Redis{Addr: m.Addr(), Mini: m}
}

// Name returns a name unique to this test run, safe for topics, groups and
// key prefixes: the test's name cleaned, plus random hex.
func Name(t testing.TB) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	n := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			return r
		}
		return '-'
	}, t.Name())
	if len(n) > 40 {
		n = n[:40]
	}
	return n + "-" + hex.EncodeToString(b[:])
}

// CreateTopic creates a topic with the given partitions and waits until its
// leaders answer.
func CreateTopic(t testing.TB, brokers []string, topic string, partitions int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cl := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second}
	res, err := cl.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
		Topic: topic, NumPartitions: partitions, ReplicationFactor: 1,
	}}})
	if err != nil {
		t.Fatalf("create topic %s: %v", topic, err)
	}
	if e := res.Errors[topic]; e != nil {
		t.Fatalf("create topic %s: %v", topic, e)
	}
	for {
		md, err := cl.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
		if err == nil && len(md.Topics) == 1 && md.Topics[0].Error == nil && len(md.Topics[0].Partitions) == partitions {
			ready := true
			for _, p := range md.Topics[0].Partitions {
				if p.Error != nil || p.Leader.Host == "" {
					ready = false
				}
			}
			if ready {
				return
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("topic %s not ready: %v", topic, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Produce writes n records to topic, spread over its partitions by key
// "k<i>", values "v<i>", and fails the test on any error.
func Produce(t testing.TB, brokers []string, topic string, from, n int) {
	t.Helper()
	ProduceSized(t, brokers, topic, from, n, 0)
}

// ProduceSized is Produce with values padded to size bytes.
func ProduceSized(t testing.TB, brokers []string, topic string, from, n, size int) {
	t.Helper()
	msgs := make([]kafka.Message, 0, 1000)
	w := &kafka.Writer{
		Addr:         kafka.TCP(brokers...),
		Topic:        topic,
		Balancer:     &kafka.Hash{},
		BatchSize:    1000,
		BatchBytes:   900 << 10, // under the broker's default max message size
		BatchTimeout: 5 * time.Millisecond,
		RequiredAcks: kafka.RequireAll,
	}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	flush := func() {
		if len(msgs) == 0 {
			return
		}
		// A topic created a moment ago may still answer "not leader" for a
		// few partitions: retry only the messages that failed, so that no
		// record is written twice.
		pending := msgs
		err := retryKafka(ctx, func() error {
			err := w.WriteMessages(ctx, pending...)
			var werrs kafka.WriteErrors
			if errors.As(err, &werrs) {
				var failed []kafka.Message
				for i, e := range werrs {
					if e != nil {
						failed = append(failed, pending[i])
					}
				}
				pending = failed
			}
			return err
		})
		if err != nil {
			t.Fatalf("produce to %s: %v", topic, err)
		}
		msgs = msgs[:0]
	}
	for i := from; i < from+n; i++ {
		v := []byte("v" + strconv.Itoa(i))
		if len(v) < size {
			v = append(v, make([]byte, size-len(v))...)
		}
		msgs = append(msgs, kafka.Message{Key: []byte("k" + strconv.Itoa(i)), Value: v})
		if len(msgs) == cap(msgs) {
			flush()
		}
	}
	flush()
}

// LogEnd returns the log end offset (high watermark) of each partition.
func LogEnd(t testing.TB, brokers []string, topic string, partitions int) map[int]int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second}
	reqs := make([]kafka.OffsetRequest, partitions)
	for p := range reqs {
		reqs[p] = kafka.LastOffsetOf(p)
	}
	var res *kafka.ListOffsetsResponse
	err := retryKafka(ctx, func() (err error) {
		res, err = cl.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
		if err == nil {
			for _, p := range res.Topics[topic] {
				if p.Error != nil {
					// e.g. Not Leader For Partition right after a topic
					// was (re)created: transient
					return fmt.Errorf("partition %d: %w", p.Partition, p.Error)
				}
			}
		}
		return err
	})
	if err != nil {
		t.Fatalf("list offsets of %s: %v", topic, err)
	}
	out := map[int]int64{}
	for _, p := range res.Topics[topic] {
		if p.Error != nil {
			t.Fatalf("list offsets of %s/%d: %v", topic, p.Partition, p.Error)
		}
		out[p.Partition] = p.LastOffset
	}
	return out
}

// Committed returns the offsets the Kafka group committed for topic
// (partition → offset; -1 where nothing was committed).
func Committed(t testing.TB, brokers []string, group, topic string, partitions int) map[int]int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second}
	ps := make([]int, partitions)
	for i := range ps {
		ps[i] = i
	}
	var res *kafka.OffsetFetchResponse
	err := retryKafka(ctx, func() (err error) {
		res, err = cl.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: ps}})
		if err == nil && res.Error != nil {
			err = res.Error
		}
		return err
	})
	if err != nil {
		t.Fatalf("offset fetch %s: %v", group, err)
	}
	out := map[int]int64{}
	for _, p := range res.Topics[topic] {
		out[p.Partition] = p.CommittedOffset
	}
	return out
}

// Eventually polls cond every 20 ms until it returns true, and fails the test
// with the message if it has not by the deadline. An argument given as a
// func() any is called for the message at the failure.
func Eventually(t testing.TB, within time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			// an argument given as a func() any is read now, at the
			// failure, not when Eventually was called
			vals := []any{within}
			for _, a := range args {
				if f, ok := a.(func() any); ok {
					a = f()
				}
				vals = append(vals, a)
			}
			t.Fatalf("after %v: "+format, vals...)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// ScriptsDir returns the repository's scripts/ directory: KBRIDGE_SCRIPTS, or
// found from this source file.
func ScriptsDir() string {
	if v := os.Getenv("KBRIDGE_SCRIPTS"); v != "" {
		return v
	}
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "scripts")
}

// RedisServer is a redis-server process of the test's own, started by
// scripts/redis.sh, that the test may stop and start again.
type RedisServer struct {
	Port    int
	Persist string // none, rdb or aof
	Dir     string
}

// Addr returns the server's address.
func (s *RedisServer) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.Port) }

// StartRedisServer starts a redis-server of the test's own on a free port
// (needs REDIS_ADDR, i.e. the real services, so redis-server is installed);
// it is stopped when the test ends.
func StartRedisServer(t testing.TB, persist string) *RedisServer {
	t.Helper()
	if !RealRedis() {
		t.Skip("needs a real redis-server (run scripts/test.sh, which sets REDIS_ADDR)")
	}
	s := &RedisServer{Port: FreePort(t), Persist: persist, Dir: t.TempDir()}
	s.Start(t)
	t.Cleanup(func() { s.run(t, "stop") })
	return s
}

// Start starts the server (again).
func (s *RedisServer) Start(t testing.TB) { t.Helper(); s.run(t, "start") }

// Stop stops the server (SHUTDOWN NOSAVE when persistence is none).
func (s *RedisServer) Stop(t testing.TB) { t.Helper(); s.run(t, "stop") }

func (s *RedisServer) run(t testing.TB, verb string) {
	t.Helper()
	cmd := exec.Command("bash", filepath.Join(ScriptsDir(), "redis.sh"), verb)
	cmd.Env = append(os.Environ(),
		"REDIS_PORT="+strconv.Itoa(s.Port),
		"REDIS_PERSIST="+s.Persist,
		"REDIS_DATA_DIR="+s.Dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("redis.sh %s: %v\n%s", verb, err, out)
	}
}

// String describes the environment, for test logs.
func String() string {
	k, r := "kfake (in-process)", "miniredis (in-process)"
	if RealKafka() {
		k = "real Kafka " + os.Getenv("KAFKA_BROKERS")
	}
	if RealRedis() {
		r = "real Redis " + os.Getenv("REDIS_ADDR")
	}
	return fmt.Sprintf("%s, %s", k, r)
}

// BuildKbridge builds cmd/kbridge once per test binary and returns its path.
func BuildKbridge(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kbridge-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "kbridge")
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/kbridge")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/kbridge: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// Crash stops the server without saving (SHUTDOWN NOSAVE), as a crash would:
// with persistence on, the next Start loads the last snapshot, not the
// current data.
func (s *RedisServer) Crash(t testing.TB) {
	t.Helper()
	out, err := exec.Command("redis-cli", "-p", strconv.Itoa(s.Port), "shutdown", "nosave").CombinedOutput()
	if err != nil && !strings.Contains(string(out), "connect") {
		// redis-cli reports the dropped connection as an error: expected.
		t.Logf("redis-cli shutdown nosave: %v %s", err, out)
	}
	addr := s.Addr()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err != nil {
			return
		}
		c.Close()
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("redis on %s still answers after SHUTDOWN NOSAVE", addr)
}

// KafkaBroker is a Kafka broker of the test's own, started by
// scripts/kafka.sh, that the test may stop and start again (its data kept).
type KafkaBroker struct {
	Port int
	Dir  string
}

// Addr returns the broker's address.
func (k *KafkaBroker) Addr() string { return "127.0.0.1:" + strconv.Itoa(k.Port) }

// StartKafkaBroker starts a Kafka broker of the test's own on a free port
// (needs KAFKA_BROKERS, i.e. the real services, so the jars are cached); it
// is stopped when the test ends.
func StartKafkaBroker(t testing.TB) *KafkaBroker {
	t.Helper()
	if !RealKafka() {
		t.Skip("needs a real Kafka broker (run scripts/test.sh, which sets KAFKA_BROKERS)")
	}
	k := &KafkaBroker{Dir: t.TempDir(), Port: freePortPair(t)}
	k.run(t, "start", "KAFKA_FRESH=1")
	t.Cleanup(func() { k.run(t, "stop") })
	return k
}

// freePortPair returns a port p such that p and p+1 are free, chosen below
// the kernel's ephemeral range (32768-60999 by default): a port from that
// range can be taken by any outgoing connection between the check and the
// broker's bind.
func freePortPair(t testing.TB) int {
	t.Helper()
	for range 1000 {
		p := 20000 + mrand.IntN(9000)
		if p >= 29090 && p <= 29100 { // the shared development broker's ports
			continue
		}
		if !portTaken(p) && !portTaken(p+1) {
			return p
		}
	}
	t.Fatal("no free port pair in 20000-29000")
	return 0
}

func portTaken(p int) bool {
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
	if err != nil {
		return true
	}
	l.Close()
	return false
}

// Start starts the broker again, with its data.
func (k *KafkaBroker) Start(t testing.TB) { t.Helper(); k.run(t, "start") }

// Stop stops the broker (SIGTERM, a clean shutdown).
func (k *KafkaBroker) Stop(t testing.TB) { t.Helper(); k.run(t, "stop") }

func (k *KafkaBroker) run(t testing.TB, verb string, env ...string) {
	t.Helper()
	cmd := exec.Command("bash", filepath.Join(ScriptsDir(), "kafka.sh"), verb)
	cmd.Env = append(append(os.Environ(),
		"KAFKA_PORT="+strconv.Itoa(k.Port),
		"KAFKA_CONTROLLER_PORT="+strconv.Itoa(k.Port+1),
		"KAFKA_DATA_DIR="+k.Dir), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("kafka.sh %s: %v\n%s", verb, err, out)
	}
}

// retryKafka retries op while it fails and ctx lasts: a broker that just
// restarted, or a coordinator moving, answers with transient errors.
func retryKafka(ctx context.Context, op func() error) error {
	for {
		err := op()
		if err == nil || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(200 * time.Millisecond):
		}
	}
}
