package e2e

import (
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kbridge/kbridge/internal/testenv"
)

// TestSecretsNeverShown runs an ingest and a worker on the secured Kafka
// (SCRAM over SASL_SSL) and the secured Redis (TLS, ACL user) at debug log
// level, with the secrets given every supported way — the Kafka password in
// KBRIDGE_KAFKA_PASSWORD (ingest) and in a file (status), the Redis password
// in a file (ingest, status) and inside KBRIDGE_REDIS_URL (worker) — through a
// dead letter and a failed login, and then greps for every secret: each log
// line of every process, `kbridge status` (text and JSON), `kbridge dlq
// list`, --help, the error of a wrong password, the /metrics page, the
// processes' command lines (what ps shows), and the environment the worker
// gives its --exec commands.
func TestSecretsNeverShown(t *testing.T) {
	k := secureKafka(t)
	adminPW, userPW := secret("redis-admin-pw"), secret("redis-kbridge-pw")
	rs := startRedis(t, redisOpts{tls: true, authClients: "yes", password: adminPW})
	ctx := context.Background()
	topic, group, prefix := testenv.Name(t), testenv.Name(t), testenv.Name(t)
	if err := rs.admin(t).Do(ctx, append(append([]any{"acl", "setuser", "kbridge"}, aclRule(prefix, aclCommands)...), ">"+userPW)...).Err(); err != nil {
		t.Fatal(err)
	}
	secrets := map[string]string{"Kafka password": k.users["kbridge"], "Kafka admin password": k.users["admin"],
		"Redis password": userPW, "Redis admin password": adminPW}
	const partitions, records = 2, 100
	testenv.CreateTopic(t, k.adminBrokers(), topic, partitions)
	k.grantIngest(t, "kbridge", group, topic)
	k.grantDLQ(t, "kbridge", topic) // the poison record's dead letter goes to Kafka before the commit passes it
	testenv.Produce(t, k.adminBrokers(), topic, 0, records)
	ends := testenv.LogEnd(t, k.adminBrokers(), topic, partitions)

	kafkaArgs := []string{"--brokers", addr(k.saslSSL), "--kafka-tls", "--kafka-tls-ca", filepath.Join(k.tlsDir, "ca.crt"),
		"--kafka-sasl", "scram-sha-512", "--kafka-username", "kbridge"}
	redisFile := writeSecret(t, userPW)
	redisArgs := append([]string{"--redis-url", rs.url("kbridge"), "--redis-password-file", redisFile, "--prefix", prefix,
		"--log-level", "debug"}, rs.tlsFlags()...)
	metrics := addr(freePorts(t, 1)[0])
	ingest := startKbridge(t, "ingest", []string{"KBRIDGE_KAFKA_PASSWORD=" + k.users["kbridge"]},
		append(append(append(slices.Clone(redisArgs), "ingest", "--topics", topic, "--group", group, "--metrics-addr", metrics), kafkaArgs...), fastIngest...)...)

	// The worker gets the whole URL, password included, from the environment.
	l := newLedger(t)
	envDump := filepath.Join(t.TempDir(), "exec-env")
	poison := filepath.Join(t.TempDir(), "poison")
	if err := os.WriteFile(poison, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	urlWithPW := strings.Replace(rs.url("kbridge"), "kbridge@", "kbridge:"+userPW+"@", 1)
	worker := startKbridge(t, "worker", []string{"KBRIDGE_REDIS_URL=" + urlWithPW, l.env(), "E2E_POISON=" + poison},
		append([]string{"--prefix", prefix, "--log-level", "debug", "--log-format", "json"}, append(rs.tlsFlags(),
			"worker", "--exec", "env >"+envDump+"; "+execCmd, "--max-deliveries", "2", "--backoff-min", "10ms", "--backoff-max", "20ms",
			"--discovery-interval", "200ms")...)...)

	var committed map[int]int64
	testenv.Eventually(t, 60*time.Second, func() bool {
		committed = testenv.Committed(t, k.adminBrokers(), group, topic, partitions)
		return committed[0] == ends[0] && committed[1] == ends[1]
	}, "commits %v, want the log ends %v", func() any { return committed }(), ends)

	// What kbridge printed outside the two processes' logs, by where. (The
	// command lines the test gives are not kbridge's output: some carry the
	// password on purpose.)
	type output struct{ where, text string }
	var shown []output
	run := func(what string, env []string, args ...string) {
		cmd := exec.Command(testenv.BuildKbridge(t), args...)
		cmd.Env = append(cleanEnv(), env...)
		out, _ := cmd.CombinedOutput()
		shown = append(shown, output{what, string(out)})
	}
	pwFile := writeSecret(t, k.users["kbridge"])
	statusArgs := append(append(slices.Clone(redisArgs), "status", "--group", group, "--topics", topic, "--kafka-password-file", pwFile), kafkaArgs...)
	run("kbridge status", nil, statusArgs...)
	run("kbridge status --json", nil, append(statusArgs, "--json")...)
	run("kbridge dlq list --json", nil, append(slices.Clone(redisArgs), "dlq", "list", "--json")...)
	run("kbridge ingest --help", []string{"KBRIDGE_REDIS_URL=" + urlWithPW, "KBRIDGE_KAFKA_PASSWORD=" + k.users["kbridge"]}, "ingest", "--help")
	run("kbridge --help", []string{"KBRIDGE_REDIS_URL=" + urlWithPW}, "--help")
	wrongURL := strings.Replace(urlWithPW, userPW, adminPW, 1) // a real secret, of the wrong user
	run("a wrong password in --redis-url", nil, append([]string{"--redis-url", wrongURL, "--prefix", prefix}, append(rs.tlsFlags(), "dlq", "list")...)...)
	if !strings.Contains(shown[len(shown)-1].text, "WRONGPASS") {
		t.Errorf("a wrong Redis password did not give WRONGPASS:\n%s", shown[len(shown)-1].text)
	}
	// URLs that do not parse: url.Parse's errors quote them, password included.
	run("an unparsable URL in KBRIDGE_REDIS_URL", []string{"KBRIDGE_REDIS_URL=" + strings.Replace(urlWithPW, userPW, userPW+"#x", 1)}, "dlq", "list")
	run("an unparsable --redis-url", nil, "--redis-url", strings.Replace(urlWithPW, userPW, userPW+"%zz", 1), "worker", "--exec", "true")
	run("a --http URL with basic-auth credentials", nil, "--redis-url", rs.url(""), "worker", "--http", "ftp://kbridge:"+userPW+"@127.0.0.1/x")
	res, err := http.Get("http://" + metrics + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	page, _ := io.ReadAll(res.Body)
	res.Body.Close()
	shown = append(shown, output{"GET /metrics", string(page)})
	for _, p := range []*proc{ingest, worker} {
		cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(p.cmd.Process.Pid) + "/cmdline")
		if err != nil {
			t.Fatalf("cmdline of %s: %v", p.name, err)
		}
		shown = append(shown, output{"the command line of " + p.name + " (ps)", strings.ReplaceAll(string(cmdline), "\x00", " ")})
	}
	execEnv, err := os.ReadFile(envDump)
	if err != nil {
		t.Fatalf("the --exec command's environment: %v", err)
	}
	shown = append(shown, output{"the environment of --exec commands", string(execEnv)})

	worker.stop(t)
	ingest.stop(t)

	// The error paths: an ingest and a worker whose passwords are real
	// secrets, of the wrong users, run until each has logged its failure.
	badPW := writeSecret(t, k.users["admin"])
	badIngest := startKbridge(t, "ingest with wrong passwords", []string{"KBRIDGE_REDIS_URL=" + wrongURL},
		append(append(append(append([]string{"--prefix", prefix, "--log-level", "debug"}, rs.tlsFlags()...), "ingest", "--topics", topic, "--group", group,
			"--kafka-password-file", badPW), kafkaArgs...), fastIngest...)...)
	badWorker := startKbridge(t, "worker with a wrong password", []string{"KBRIDGE_REDIS_URL=" + wrongURL},
		append(append([]string{"--prefix", prefix, "--log-level", "debug"}, rs.tlsFlags()...), "worker", "--exec", "true")...)
	testenv.Eventually(t, 30*time.Second, func() bool {
		return (badIngest.has("WRONGPASS") || badIngest.has("SASL Authentication Failed")) && badWorker.has("WRONGPASS")
	}, "the processes with wrong passwords did not log their failures")
	for _, p := range []*proc{badIngest, badWorker} {
		if !p.exited() {
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
			if _, ok := p.exitCode(30 * time.Second); !ok {
				_ = p.cmd.Process.Kill()
			}
		}
	}

	lines := 0
	check := func(where, text string) {
		for what, s := range secrets {
			if strings.Contains(text, s) {
				t.Errorf("the %s appears in %s:\n%s", what, where, text)
			}
		}
	}
	for _, p := range []*proc{ingest, worker, badIngest, badWorker} {
		for _, line := range p.allLines() {
			check(p.name+"'s log", line)
			lines++
		}
	}
	for _, o := range shown {
		check(o.where, o.text)
	}
	// Every record but the poison one (dead-lettered, not replayed here).
	if n, first := l.missing(t, ends); n != 1 || first != "0/7" {
		t.Errorf("%d records never handled (first %s), want only the dead letter 0/7", n, first)
	}
	if !worker.has("dead-lettered") {
		t.Errorf("the poison record was not dead-lettered: the run did not reach the error paths it should")
	}
	t.Logf("no secret (%d of them) in %d log lines of ingest and worker (debug level; with right and with wrong passwords), nor in status, status --json, dlq list, --help, a WRONGPASS error, errors about unparsable URLs, /metrics (%d bytes), ps, or the --exec environment",
		len(secrets), lines, len(page))
}
