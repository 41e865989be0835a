package e2e

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

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
			worker.stop(t)
			ingest.stop(t)
			t.Logf("%s: %d records over %d partitions handled and committed to the log end in %v; status lag %d",
				login.name, records, partitions, took.Round(time.Millisecond), st.Totals.KafkaLag)
		})
	}
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

var _ = strconv.Itoa
var _ = strings.Join
