package bridge_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/kbridge/kbridge/bridge"
	"github.com/kbridge/kbridge/internal/testenv"
)

// runUntilExit runs an ingest and returns what Run returned, failing the
// test if it is still running after within.
func runUntilExit(t *testing.T, cfg bridge.Config, within time.Duration) (error, time.Duration, *bridge.Ingest) {
	t.Helper()
	in, err := bridge.New(cfg)
	if err != nil {
		t.Fatalf("bridge.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	began := time.Now()
	go func() { done <- in.Run(ctx) }()
	select {
	case err := <-done:
		return err, time.Since(began), in
	case <-time.After(within):
		cancel()
		<-done
		t.Fatalf("Run still running after %v, want it to return an error", within)
		return nil, 0, nil
	}
}

// testCA is a certificate authority of the test's own and a server
// certificate for 127.0.0.1 it signed.
type testCA struct {
	pool   *x509.CertPool
	server tls.Certificate
}

func newTestCA(t *testing.T) testCA {
	t.Helper()
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	caKey, srvKey := key(), key()
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kbridge test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	srv := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	srvDER, err := x509.CreateCertificate(rand.Reader, srv, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return testCA{pool: pool, server: tls.Certificate{Certificate: [][]byte{srvDER}, PrivateKey: srvKey}}
}

// saslKafka is an in-process Kafka that wants SASL PLAIN: user "admin"
// (superuser) and user "kb" with the given ACLs (enforced when acls is
// true), with topic holding two partitions of 10 records.
func saslKafka(t *testing.T, topic string, acls bool, userACLs ...kfake.ACL) []string {
	t.Helper()
	opts := []kfake.Opt{kfake.NumBrokers(1), kfake.EnableSASL(), kfake.Superuser("PLAIN", "admin", "admin-pw"),
		kfake.User("PLAIN", "kb", "kb-pw", userACLs...), kfake.SeedTopics(2, topic),
		kfake.GroupMinSessionTimeout(500 * time.Millisecond)}
	if acls {
		opts = append(opts, kfake.EnableACLs())
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()
}

// adminCommitted returns the committed offsets of group (on saslKafka's
// cluster as its admin if sasl); none for a group the broker does not know.
func adminCommitted(t *testing.T, brokers []string, sasl bool, group string) map[string][]kafka.OffsetFetchPartition {
	t.Helper()
	tr := &kafka.Transport{}
	if sasl {
		tr.SASL = plain.Mechanism{Username: "admin", Password: "admin-pw"}
	}
	cl := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second, Transport: tr}
	defer tr.CloseIdleConnections()
	res, err := cl.OffsetFetch(context.Background(), &kafka.OffsetFetchRequest{GroupID: group})
	if err == nil {
		err = res.Error
	}
	if errors.Is(err, kafka.GroupIdNotFound) {
		return nil
	}
	if err != nil {
		t.Fatalf("offset fetch of group %s: %v", group, err)
	}
	return res.Topics
}

func acl(rt kmsg.ACLResourceType, name string, op kmsg.ACLOperation) kfake.ACL {
	return kfake.ACL{Resource: rt, Name: name, Pattern: kmsg.ACLResourcePatternTypeLiteral, Operation: op, Allow: true}
}

// TestStartupRefusals (issue 7 point 8): credentials or permissions that
// Kafka or Redis refuse end Run at once with an *AuthError that says why —
// before the ingest joins its group, so nothing is committed and healthy
// members keep the partitions. On main a wrong Redis password read as "CONFIG
// GET refused", the ingest joined and retried WRONGPASS for ever; a TLS
// failure was "unreachable", retried for ever.
func TestStartupRefusals(t *testing.T) {
	ca := newTestCA(t)
	otherCA := newTestCA(t)
	for _, tc := range []struct {
		name string
		// setup returns the config's Kafka and Redis parts.
		setup func(t *testing.T, cfg *bridge.Config)
		want  string // in the error
	}{
		{"redis-wrong-password", func(t *testing.T, cfg *bridge.Config) {
			m := miniredis.RunT(t)
			m.RequireUserAuth("kb", "right")
			cfg.Redis = redisClient(t, &redis.Options{Addr: m.Addr(), Username: "kb", Password: "wrong"})
		}, "WRONGPASS"},
		{"redis-tls-unknown-authority", func(t *testing.T, cfg *bridge.Config) {
			m := miniredis.NewMiniRedis()
			if err := m.StartTLS(&tls.Config{Certificates: []tls.Certificate{ca.server}}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(m.Close)
			cfg.Redis = redisClient(t, &redis.Options{Addr: m.Addr(), TLSConfig: &tls.Config{RootCAs: otherCA.pool}})
		}, "certificate signed by unknown authority"},
		{"redis-tls-client-certificate-required", func(t *testing.T, cfg *bridge.Config) {
			m := miniredis.NewMiniRedis()
			if err := m.StartTLS(&tls.Config{Certificates: []tls.Certificate{ca.server}, ClientAuth: tls.RequireAnyClientCert}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(m.Close)
			cfg.Redis = redisClient(t, &redis.Options{Addr: m.Addr(), TLSConfig: &tls.Config{RootCAs: ca.pool}})
		}, "certificate required"},
		{"kafka-group-without-any-ACL", func(t *testing.T, cfg *bridge.Config) {
			cfg.Brokers = saslKafka(t, cfg.Topics[0], true, acl(kmsg.ACLResourceTypeTopic, cfg.Topics[0], kmsg.ACLOperationRead))
			cfg.SASL = plain.Mechanism{Username: "kb", Password: "kb-pw"}
		}, "Group Authorization Failed"},
		{"kafka-group-DESCRIBE-but-not-READ", func(t *testing.T, cfg *bridge.Config) {
			cfg.Brokers = saslKafka(t, cfg.Topics[0], true, acl(kmsg.ACLResourceTypeTopic, cfg.Topics[0], kmsg.ACLOperationRead),
				acl(kmsg.ACLResourceTypeGroup, cfg.Group, kmsg.ACLOperationDescribe))
			cfg.SASL = plain.Mechanism{Username: "kb", Password: "kb-pw"}
		}, "Group Authorization Failed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := testenv.Name(t)
			cfg := bridge.Config{Topics: []string{name}, Group: "g-" + name, Prefix: "kbt-" + name,
				SessionTimeout: 6 * time.Second, RebalanceTimeout: 15 * time.Second, HeartbeatInterval: 500 * time.Millisecond,
				AllowEviction: true, Logger: testLogger(t)}
			tc.setup(t, &cfg)
			if cfg.Brokers == nil {
				cfg.Brokers = testenv.Kafka(t)
				testenv.CreateTopic(t, cfg.Brokers, name, 2)
			}
			if cfg.Redis == nil {
				cfg.Redis = testenv.NewRedis(t).Client(t)
			}
			err, took, in := runUntilExit(t, cfg, 30*time.Second)
			var ae *bridge.AuthError
			if !errors.As(err, &ae) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Run returned %v, want an *bridge.AuthError saying %q", err, tc.want)
			}
			if st := in.Stats(); st.Rebalances != 0 || st.Commits != 0 {
				t.Errorf("generations joined %d, commits %d: want none", st.Rebalances, st.Commits)
			}
			for topic, ps := range adminCommitted(t, cfg.Brokers, cfg.SASL != nil, cfg.Group) {
				for _, p := range ps {
					if p.CommittedOffset >= 0 {
						t.Errorf("%s/%d committed %d, want nothing", topic, p.Partition, p.CommittedOffset)
					}
				}
			}
			t.Logf("Run returned after %v: %v", took.Round(time.Millisecond), err)
		})
	}
}

// TestStartupTimeout (issue 7 point 8): a Kafka or Redis that cannot be
// reached at start is retried for StartupTimeout, then Run returns a
// *StartupError (on main it retried for ever, and an orchestrator never saw
// the failure); one that comes up within the time is used.
func TestStartupTimeout(t *testing.T) {
	closed := "127.0.0.1:" + itoa(testenv.FreePort(t))
	name := testenv.Name(t)
	base := func(t *testing.T) bridge.Config {
		return bridge.Config{Topics: []string{name}, Group: "g-" + name, Prefix: "kbt-" + name,
			SessionTimeout: 6 * time.Second, RebalanceTimeout: 15 * time.Second, HeartbeatInterval: 500 * time.Millisecond,
			StartupTimeout: 2 * time.Second, AllowEviction: true, Logger: testLogger(t)}
	}
	t.Run("redis", func(t *testing.T) {
		cfg := base(t)
		cfg.Brokers = testenv.Kafka(t)
		cfg.Redis = redisClient(t, &redis.Options{Addr: closed, DialTimeout: 200 * time.Millisecond})
		err, took, _ := runUntilExit(t, cfg, 30*time.Second)
		var se *bridge.StartupError
		if !errors.As(err, &se) || se.Service != "redis" || took < cfg.StartupTimeout {
			t.Fatalf("Run returned %v after %v, want a *bridge.StartupError for redis after at least %v", err, took, cfg.StartupTimeout)
		}
		t.Logf("Run returned after %v: %v", took.Round(time.Millisecond), err)
	})
	t.Run("kafka", func(t *testing.T) {
		cfg := base(t)
		cfg.Brokers = []string{closed}
		cfg.Redis = testenv.NewRedis(t).Client(t)
		err, took, in := runUntilExit(t, cfg, 30*time.Second)
		var se *bridge.StartupError
		if !errors.As(err, &se) || se.Service != "kafka" || took < cfg.StartupTimeout {
			t.Fatalf("Run returned %v after %v, want a *bridge.StartupError for kafka after at least %v", err, took, cfg.StartupTimeout)
		}
		if st := in.Stats(); st.Rebalances != 0 {
			t.Errorf("generations joined %d, want none", st.Rebalances)
		}
		t.Logf("Run returned after %v: %v", took.Round(time.Millisecond), err)
	})
	t.Run("redis-comes-up-in-time", func(t *testing.T) {
		cfg := base(t)
		cfg.StartupTimeout = time.Minute
		cfg.Brokers = testenv.Kafka(t)
		testenv.CreateTopic(t, cfg.Brokers, name, 1)
		addr := "127.0.0.1:" + itoa(testenv.FreePort(t))
		cfg.Redis = redisClient(t, &redis.Options{Addr: addr, DialTimeout: 200 * time.Millisecond})
		r := startIngest(t, cfg)
		testenv.Eventually(t, 10*time.Second, func() bool { return r.Stats().RedisErrors >= 2 }, "the ingest did not try Redis")
		m := miniredis.NewMiniRedis()
		if err := m.StartAddr(addr); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(m.Close)
		testenv.Eventually(t, 60*time.Second, func() bool { return r.Stats().Rebalances > 0 }, "the ingest did not join once Redis was up")
		t.Logf("Redis came up after %d failed attempts; the ingest joined", r.Stats().RedisErrors)
	})
}

// TestRedisACLProbe (issue 7 point 8, real Redis): an ACL user without one of
// the commands the ingest runs (directly or in its scripts) is refused at
// start, naming the command — for each command in turn; with all of them
// (and no CONFIG) the ingest runs and bridges, warning that it cannot check
// maxmemory-policy. On main a user without XADD joined the group and
// retried "can't run this command" for ever.
func TestRedisACLProbe(t *testing.T) {
	testenv.RequireReal(t, "a redis-server with ACL users of the test's own")
	srv := testenv.StartRedisServer(t, "none")
	e := newEnv(t, 1)
	admin := redisClient(t, &redis.Options{Addr: srv.Addr()})
	ctx := context.Background()
	cmds := bridge.IngestRedisCommands()
	setUser := func(user string, commands []string) {
		rule := []any{"acl", "setuser", user, "reset", "on", ">pw", "resetkeys", "~" + e.prefix + ":*", "resetchannels", "-@all"}
		for _, c := range commands {
			rule = append(rule, "+"+c)
		}
		if err := admin.Do(ctx, rule...).Err(); err != nil {
			t.Fatal(err)
		}
	}
	for _, omit := range cmds {
		if slices.Contains(bridge.MultiAppendRedisCommands, omit) {
			continue // wanted, not required: TestMultiAppendFallbackACL
		}
		t.Run("without-"+omit, func(t *testing.T) {
			user := "kb-" + strings.ReplaceAll(omit, "|", "-")
			setUser(user, slices.DeleteFunc(slices.Clone(cmds), func(c string) bool { return c == omit }))
			cfg := e.config(t)
			cfg.Redis = redisClient(t, &redis.Options{Addr: srv.Addr(), Username: user, Password: "pw"})
			err, _, in := runUntilExit(t, cfg, 30*time.Second)
			var ae *bridge.AuthError
			if !errors.As(err, &ae) || !strings.Contains(err.Error(), strings.ToUpper(omit)) || !strings.Contains(err.Error(), "NOPERM") {
				t.Fatalf("Run returned %v, want an *bridge.AuthError naming %s with NOPERM", err, strings.ToUpper(omit))
			}
			if st := in.Stats(); st.Rebalances != 0 {
				t.Errorf("generations joined %d, want none", st.Rebalances)
			}
		})
	}
	t.Run("with-all", func(t *testing.T) {
		setUser("kb-all", cmds)
		testenv.Produce(t, e.brokers, e.topic, 0, 50)
		cfg := e.config(t)
		e.useRedis(t, srv.Addr())
		cfg.Redis = redisClient(t, &redis.Options{Addr: srv.Addr(), Username: "kb-all", Password: "pw"})
		startIngest(t, cfg)
		l := e.startWork(t, 0)
		lost, dups := e.waitDone(t, l, time.Minute)
		t.Logf("ACL user with the %d commands of bridge.IngestRedisCommands (%s): lost=%d duplicates=%d",
			len(cmds), strings.Join(cmds, " "), lost, dups)
	})
	t.Logf("%d commands, each refused when left out but %s: %s", len(cmds), strings.Join(bridge.MultiAppendRedisCommands, " "), strings.Join(cmds, " "))
}

func redisClient(t *testing.T, o *redis.Options) *redis.Client {
	o.ContextTimeoutEnabled = true
	c := redis.NewClient(o)
	t.Cleanup(func() { c.Close() })
	return c
}

func itoa(n int) string { return strconv.Itoa(n) }

// testLogger logs to the test's log at warn level (debug with
// KBRIDGE_TEST_LOG set), like env.config.
func testLogger(t *testing.T) *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("KBRIDGE_TEST_LOG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: level}))
}
