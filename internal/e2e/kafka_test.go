package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl/scram"

	"github.com/kbridge/kbridge/internal/testenv"
)

// fastIngest are ingest flags that make a test's pipeline move in
// milliseconds rather than seconds.
var fastIngest = []string{"--commit-interval", "200ms", "--fetch-max-wait", "200ms",
	"--session-timeout", "6s", "--heartbeat-interval", "500ms", "--rebalance-timeout", "15s"}

// kafkaLogin is how a kbridge process reaches the secured broker.
type kafkaLogin struct {
	name    string // listener/mechanism, for test names
	port    int
	tls     bool
	mech    string // --kafka-sasl
	user    string
	pwFile  string // --kafka-password-file
	caFile  string // --kafka-tls-ca ("" = the broker's CA)
	addArgs []string
}

func (k *kafkaServer) logins(t *testing.T) []kafkaLogin {
	pw := writeSecret(t, k.users["kbridge"])
	return []kafkaLogin{
		{name: "SASL_SSL-SCRAM-SHA-256", port: k.saslSSL, tls: true, mech: "scram-sha-256", user: "kbridge", pwFile: pw},
		{name: "SASL_SSL-SCRAM-SHA-512", port: k.saslSSL, tls: true, mech: "scram-sha-512", user: "kbridge", pwFile: pw},
		{name: "SASL_PLAINTEXT-PLAIN", port: k.saslTxt, mech: "plain", user: "kbridge", pwFile: pw},
	}
}

// args are the Kafka flags of a kbridge command for this login.
func (l kafkaLogin) args(k *kafkaServer) []string {
	a := []string{"--brokers", addr(l.port), "--kafka-sasl", l.mech, "--kafka-username", l.user, "--kafka-password-file", l.pwFile}
	if l.tls {
		ca := l.caFile
		if ca == "" {
			ca = filepath.Join(k.tlsDir, "ca.crt")
		}
		a = append(a, "--kafka-tls", "--kafka-tls-ca", ca)
	}
	return append(a, l.addArgs...)
}

// TestKafkaSASL runs an ingest and a worker, as kbridge processes, through
// each of the broker's secured listeners — SASL_SSL with SCRAM-SHA-256 and
// SCRAM-SHA-512, SASL_PLAINTEXT with PLAIN — as a user whose ACLs allow only
// reading its topic and its group: every record is handled, the commits reach
// the log end, and `kbridge status` reads the lag through the same login.
func TestKafkaSASL(t *testing.T) {
	k := secureKafka(t)
	rd := testenv.NewRedis(t)
	const partitions, records = 3, 300
	for _, login := range k.logins(t) {
		t.Run(login.name, func(t *testing.T) {
			topic, group, prefix := testenv.Name(t), testenv.Name(t), testenv.Name(t)
			t.Cleanup(func() { delPrefix(rd.Client(t), prefix) })
			testenv.CreateTopic(t, k.adminBrokers(), topic, partitions)
			k.grantIngest(t, "kbridge", group, topic)
			testenv.Produce(t, k.adminBrokers(), topic, 0, records)
			ends := testenv.LogEnd(t, k.adminBrokers(), topic, partitions)

			began := time.Now()
			redisArgs := []string{"--redis-url", "redis://" + rd.Addr, "--prefix", prefix}
			ingest := startKbridge(t, "ingest", nil, append(append(append(redisArgs, "ingest", "--topics", topic, "--group", group),
				login.args(k)...), fastIngest...)...)
			l := newLedger(t)
			worker := startKbridge(t, "worker", []string{l.env()}, append(redisArgs, "worker", "--exec", execCmd,
				"--concurrency", "8", "--discovery-interval", "200ms")...)

			var committed map[int]int64
			testenv.Eventually(t, 60*time.Second, func() bool {
				committed = testenv.Committed(t, k.adminBrokers(), group, topic, partitions)
				for p, e := range ends {
					if committed[p] != e {
						return false
					}
				}
				return true
			}, "commits %v, want the log ends %v", func() any { return committed }(), ends)
			took := time.Since(began)
			if n, first := l.missing(t, ends); n != 0 {
				t.Errorf("%d records never handled (first %s) although the commits reached the log end", n, first)
			}

			// kbridge status through the same login: lag 0.
			bin := testenv.BuildKbridge(t)
			cmd := exec.Command(bin, append(append(append(redisArgs, "status", "--group", group, "--topics", topic), login.args(k)...), "--json")...)
			cmd.Env = cleanEnv()
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("kbridge status: %v\n%s", err, out)
			}
			var st struct {
				Totals struct {
					KafkaLag int64 `json:"kafka_lag"`
				} `json:"totals"`
				Errors []string `json:"errors"`
			}
			if err := json.Unmarshal(out, &st); err != nil || st.Totals.KafkaLag != 0 || len(st.Errors) != 0 {
				t.Errorf("kbridge status --json: lag %d, errors %q (%v); want lag 0, no errors\n%s", st.Totals.KafkaLag, st.Errors, err, out)
			}
			// PLAIN without TLS sends the password as it is: kbridge says so.
			if warned, want := ingest.has("crosses the network unencrypted"), login.mech == "plain" && !login.tls; warned != want {
				t.Errorf("the ingest warned about an unencrypted PLAIN password: %v, want %v", warned, want)
			}
			worker.stop(t)
			ingest.stop(t)
			t.Logf("%s: %d records over %d partitions handled and committed to the log end in %v; status lag %d",
				login.name, records, partitions, took.Round(time.Millisecond), st.Totals.KafkaLag)
		})
	}
}

// TestKafkaUserMayDoNothingElse: the ACLs TestKafkaSASL grants (READ on the
// topic, READ on the group) are all the kbridge user has — it may not write
// to its topic, create a topic, or read another group's offsets. What
// kbridge needs is exactly what docs/operations.md tells operators to grant.
func TestKafkaUserMayDoNothingElse(t *testing.T) {
	k := secureKafka(t)
	topic, group := testenv.Name(t), testenv.Name(t)
	testenv.CreateTopic(t, k.adminBrokers(), topic, 1)
	k.grantIngest(t, "kbridge", group, topic)
	mech, err := scram.Mechanism(scram.SHA512, "kbridge", k.users["kbridge"])
	if err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(filepath.Join(k.tlsDir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	tr := &kafka.Transport{SASL: mech, TLS: &tls.Config{RootCAs: pool}}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cl := &kafka.Client{Addr: kafka.TCP(addr(k.saslSSL)), Timeout: 10 * time.Second, Transport: tr}

	// What it may: read metadata of its topic and fetch its group's offsets.
	if _, err := cl.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: {0}}}); err != nil {
		t.Errorf("the user may not fetch its own group's offsets: %v", err)
	}
	w := &kafka.Writer{Addr: kafka.TCP(addr(k.saslSSL)), Topic: topic, Transport: tr, MaxAttempts: 1, RequiredAcks: kafka.RequireAll}
	defer w.Close()
	werr := w.WriteMessages(ctx, kafka.Message{Value: []byte("x")})
	var wes kafka.WriteErrors
	if errors.As(werr, &wes) && len(wes) == 1 {
		werr = wes[0] // one message, one error
	}
	if !errors.Is(werr, kafka.TopicAuthorizationFailed) {
		t.Errorf("produce as kbridge: %v, want Topic Authorization Failed", werr)
	}
	res, err := cl.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{Topic: topic + "-new", NumPartitions: 1, ReplicationFactor: 1}}})
	var cerr error = err
	if err == nil {
		cerr = res.Errors[topic+"-new"]
	}
	if !errors.Is(cerr, kafka.TopicAuthorizationFailed) && !errors.Is(cerr, kafka.ClusterAuthorizationFailed) {
		t.Errorf("create a topic as kbridge: %v, want an authorization error", cerr)
	}
	of, err := cl.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group + "-other", Topics: map[string][]int{topic: {0}}})
	var ferr error = err
	if err == nil {
		ferr = of.Error
	}
	if !errors.Is(ferr, kafka.GroupAuthorizationFailed) {
		t.Errorf("fetch another group's offsets as kbridge: %v, want Group Authorization Failed", ferr)
	}
	t.Logf("as kbridge: produce → %v; create topic → %v; another group's offsets → %v", werr, cerr, ferr)
}

// committedNothing fails the test if the group committed anything on topic.
func committedNothing(t *testing.T, k *kafkaServer, group, topic string, partitions int) {
	t.Helper()
	for p, off := range testenv.Committed(t, k.adminBrokers(), group, topic, partitions) {
		if off >= 0 {
			t.Errorf("partition %d: committed %d, want nothing committed", p, off)
		}
	}
}

// expectFatal waits until each process has exited with a non-zero status
// (all within the time allowed), having said why in a line that matches the
// regular expression why (case-insensitive).
func expectFatal(t *testing.T, within time.Duration, why string, procs ...*proc) {
	t.Helper()
	re := regexp.MustCompile("(?i)" + why)
	began := time.Now()
	for _, p := range procs {
		code, exited := p.exitCode(max(0, within-time.Since(began)))
		switch {
		case !exited:
			t.Errorf("%s still running after %v, want a non-zero exit (issue 7 point 8: authentication and authorisation errors are fatal at start)%s",
				p.name, within, lastLines(p, 3))
		case code == 0:
			t.Errorf("%s exited with status 0, want non-zero", p.name)
		}
		var said string
		for _, l := range p.allLines() {
			if re.MatchString(l) {
				said = l
				break
			}
		}
		switch {
		case said == "":
			t.Errorf("%s: no line matches %q%s", p.name, why, lastLines(p, 3))
		case exited:
			t.Logf("%s: exit %d after %v; it said: %s", p.name, code, time.Since(began).Round(time.Millisecond), said)
		default:
			t.Logf("%s: still running; it said: %s", p.name, said)
		}
	}
}

// lastLines returns the last n lines of a process's output, for messages.
func lastLines(p *proc, n int) string {
	ls := p.allLines()
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return "; last lines:\n\t" + strings.Join(ls, "\n\t")
}

// TestKafkaBadCredentials: an ingest with a wrong password, an unknown user,
// a SASL mechanism the listener does not offer, or a CA that did not sign
// the broker's certificate exits non-zero with a message that names the
// cause, never joins the group and commits nothing.
func TestKafkaBadCredentials(t *testing.T) {
	k := secureKafka(t)
	rd := testenv.NewRedis(t)
	good := writeSecret(t, k.users["kbridge"])
	wrong := writeSecret(t, secret("wrong"))
	otherCA := filepath.Join(certs(t), "ca.crt")
	for _, tc := range []struct {
		login kafkaLogin
		why   string // regexp
	}{
		{kafkaLogin{name: "wrong-password", port: k.saslSSL, tls: true, mech: "scram-sha-256", user: "kbridge", pwFile: wrong},
			"SASL Authentication Failed"},
		{kafkaLogin{name: "unknown-user", port: k.saslTxt, mech: "plain", user: "nobody", pwFile: wrong},
			"SASL Authentication Failed"},
		{kafkaLogin{name: "PLAIN-on-the-SCRAM-listener", port: k.saslSSL, tls: true, mech: "plain", user: "kbridge", pwFile: good},
			"Unsupported SASL Mechanism"},
		{kafkaLogin{name: "SCRAM-on-the-PLAIN-listener", port: k.saslTxt, mech: "scram-sha-512", user: "kbridge", pwFile: good},
			"Unsupported SASL Mechanism"},
		{kafkaLogin{name: "wrong-CA", port: k.saslSSL, tls: true, mech: "scram-sha-256", user: "kbridge", pwFile: good, caFile: otherCA},
			"certificate signed by unknown authority"},
	} {
		t.Run(tc.login.name, func(t *testing.T) {
			topic, group, prefix := testenv.Name(t), testenv.Name(t), testenv.Name(t)
			t.Cleanup(func() { delPrefix(rd.Client(t), prefix) })
			testenv.CreateTopic(t, k.adminBrokers(), topic, 2)
			k.grantIngest(t, "kbridge", group, topic)
			testenv.Produce(t, k.adminBrokers(), topic, 0, 20)
			in := startKbridge(t, "ingest", nil, append(append([]string{"--redis-url", "redis://" + rd.Addr, "--prefix", prefix,
				"ingest", "--topics", topic, "--group", group}, tc.login.args(k)...), fastIngest...)...)
			expectFatal(t, 30*time.Second, tc.why, in)
			// kbridge status through the same login says why, and fails.
			cmd := exec.Command(testenv.BuildKbridge(t), append(append([]string{"--redis-url", "redis://" + rd.Addr, "--prefix", prefix,
				"status", "--topics", topic, "--group", group}, tc.login.args(k)...), "--timeout", "10s")...)
			cmd.Env = cleanEnv()
			out, _ := cmd.CombinedOutput()
			if code := cmd.ProcessState.ExitCode(); code == 0 || !regexp.MustCompile("(?i)"+tc.why).Match(out) {
				t.Errorf("kbridge status: exit %d, output %q; want a non-zero exit and %q", code, out, tc.why)
			}
			if n := k.groupMembers(t, group); n != 0 {
				t.Errorf("group %s has %d members, want none", group, n)
			}
			committedNothing(t, k, group, topic, 2)
		})
	}
}

// TestKafkaNotAuthorized: the kbridge user lacks an ACL the ingest needs.
// A topic it may not describe, or not read, gives a log line that names the
// topic and says it is not authorised — never a silent stall: either the
// ingest exits non-zero, or it bridges the topics it may read (a worker
// handles them and the commits reach the log end) — and nothing of the
// forbidden topic is committed. A group it may not use is fatal: non-zero
// exit, nothing committed.
func TestKafkaNotAuthorized(t *testing.T) {
	k := secureKafka(t)
	rd := testenv.NewRedis(t)
	login := k.logins(t)[0]
	for _, tc := range []string{"topic-without-any-ACL", "topic-without-READ", "group-without-READ"} {
		t.Run(tc, func(t *testing.T) {
			ok, bad, group, prefix := testenv.Name(t), testenv.Name(t)+"-forbidden", testenv.Name(t), testenv.Name(t)
			t.Cleanup(func() { delPrefix(rd.Client(t), prefix) })
			testenv.CreateTopic(t, k.adminBrokers(), ok, 2)
			testenv.CreateTopic(t, k.adminBrokers(), bad, 2)
			testenv.Produce(t, k.adminBrokers(), ok, 0, 100)
			testenv.Produce(t, k.adminBrokers(), bad, 0, 100)
			topics := ok + "," + bad
			switch tc {
			case "topic-without-any-ACL":
				k.grantIngest(t, "kbridge", group, ok)
			case "topic-without-READ":
				k.grantIngest(t, "kbridge", group, ok)
				k.allow(t, "kbridge", kafka.ResourceTypeTopic, bad, kafka.ACLOperationTypeDescribe)
			case "group-without-READ":
				k.allow(t, "kbridge", kafka.ResourceTypeTopic, ok, kafka.ACLOperationTypeRead)
				topics = ok
			}
			redisArgs := []string{"--redis-url", "redis://" + rd.Addr, "--prefix", prefix}
			in := startKbridge(t, "ingest", nil, append(append(append(redisArgs, "ingest", "--topics", topics, "--group", group),
				login.args(k)...), fastIngest...)...)
			if tc == "group-without-READ" {
				expectFatal(t, 30*time.Second, "group authorization failed", in)
				committedNothing(t, k, group, ok, 2)
				return
			}
			l := newLedger(t)
			startKbridge(t, "worker", []string{l.env()}, append(redisArgs, "worker", "--exec", execCmd, "--discovery-interval", "200ms")...)
			ends := testenv.LogEnd(t, k.adminBrokers(), ok, 2)
			var said string
			var code int
			var exited, flowed bool
			testenv.Eventually(t, 30*time.Second, func() bool {
				said = in.line(bad, "authorization failed")
				code, exited = in.exitCode(0)
				c := testenv.Committed(t, k.adminBrokers(), group, ok, 2)
				flowed = c[0] == ends[0] && c[1] == ends[1]
				return said != "" && (exited || flowed)
			}, "no clear error: a line naming %s and its authorisation %v, exited %v (status %d), readable topic committed to the log end %v%s",
				bad, said != "", exited, code, flowed, lastLines(in, 3))
			if exited && code == 0 {
				t.Errorf("ingest exited with status 0")
			}
			committedNothing(t, k, group, bad, 2)
			t.Logf("%s: exited %v (status %d), readable topic bridged %v; the ingest said: %s", tc, exited, code, flowed, said)
		})
	}
}
