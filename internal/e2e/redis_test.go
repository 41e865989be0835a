package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

// aclCommands are the Redis commands kbridge needs: ingest, worker (exec and
// HTTP, reclaim, lease extension, dead letters), status and dlq. docs/
// operations.md ("Security") lists the same rule; TestRedisACLUser fails if
// kbridge calls a command that is not in it.
var aclCommands = []string{
	// scripts (go-redis runs EVALSHA, then EVAL or SCRIPT LOAD on NOSCRIPT);
	// the commands the scripts call are checked too
	"eval", "evalsha", "script|load",
	// streams; xgroup|setid: the ingest sets back a group left above the
	// stream's top; xgroup|destroy: kbridge groups remove
	"xadd", "xack", "xautoclaim", "xclaim", "xdel", "xgroup|create", "xgroup|delconsumer", "xgroup|setid", "xgroup|destroy",
	"xinfo|consumers", "xinfo|groups", "xinfo|stream", "xlen", "xpending", "xrange", "xreadgroup", "xtrim",
	// the registry set, the status hashes, the runs hashes (hscan: the
	// worker's runs clean-up; del: kbridge groups remove deletes the
	// group's runs hashes)
	"sadd", "smembers", "hset", "hget", "hgetall", "hdel", "hscan", "del", "pexpire", "exists",
	// the ingest's MULTI/EXEC append path (bridge/stream_multi.go)
	"multi", "exec", "rename",
}

// aclRule is the ACL SETUSER rule of the kbridge user for a key prefix.
func aclRule(prefix string, commands []string) []any {
	rule := []any{"reset", "on", "resetkeys", "~" + prefix + ":*", "resetchannels", "-@all"}
	for _, c := range commands {
		rule = append(rule, "+"+c)
	}
	return rule
}

// pipelineRun is one run of ingest + worker on a Redis and the shared Kafka.
type pipelineRun struct {
	brokers    []string
	topic      string
	group      string
	prefix     string
	partitions int
	records    int
	redisArgs  []string // --redis-url and the TLS/password flags
	ledger     ledger
	ingest     *proc
	worker     *proc
	ends       map[int]int64
}

func newPipeline(t *testing.T, partitions, records int, redisArgs ...string) *pipelineRun {
	t.Helper()
	return newPipelineOn(t, testenv.Name(t), partitions, records, redisArgs...)
}

// newPipelineOn is newPipeline with a topic name of the test's choice.
func newPipelineOn(t *testing.T, topic string, partitions, records int, redisArgs ...string) *pipelineRun {
	t.Helper()
	brokers := testenv.Kafka(t)
	r := &pipelineRun{brokers: brokers, topic: topic, group: testenv.Name(t), prefix: testenv.Name(t),
		partitions: partitions, records: records, ledger: newLedger(t)}
	r.redisArgs = append(append([]string{}, redisArgs...), "--prefix", r.prefix)
	testenv.CreateTopic(t, brokers, r.topic, partitions)
	testenv.Produce(t, brokers, r.topic, 0, records)
	r.ends = testenv.LogEnd(t, brokers, r.topic, partitions)
	return r
}

// start starts the ingest and a worker; extra worker flags in workerArgs,
// extra environment of the worker's commands in workerEnv.
func (r *pipelineRun) start(t *testing.T, workerEnv []string, workerArgs ...string) {
	t.Helper()
	r.ingest = startKbridge(t, "ingest", nil, append(append(slices.Clone(r.redisArgs), "ingest", "--brokers", strings.Join(r.brokers, ","),
		"--topics", r.topic, "--group", r.group), fastIngest...)...)
	r.worker = startKbridge(t, "worker", append([]string{r.ledger.env()}, workerEnv...), append(append(slices.Clone(r.redisArgs), "worker", "--exec", execCmd,
		"--concurrency", "8", "--discovery-interval", "200ms"), workerArgs...)...)
}

// waitCommitted waits until the commits reach the log ends and every record
// was handled.
func (r *pipelineRun) waitCommitted(t *testing.T, within time.Duration) time.Duration {
	t.Helper()
	began := time.Now()
	var committed map[int]int64
	testenv.Eventually(t, within, func() bool {
		committed = testenv.Committed(t, r.brokers, r.group, r.topic, r.partitions)
		for p, e := range r.ends {
			if committed[p] != e {
				return false
			}
		}
		return true
	}, "commits %v, want the log ends %v", func() any { return committed }(), r.ends)
	return time.Since(began)
}

// kbridge runs a one-shot kbridge command with the run's Redis flags and
// returns its output; the test fails on a non-zero exit.
func (r *pipelineRun) kbridge(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(testenv.BuildKbridge(t), append(slices.Clone(r.redisArgs), args...)...)
	cmd.Env = cleanEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("kbridge %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// statusLag runs `kbridge status --json` and returns the total Kafka lag.
func (r *pipelineRun) statusLag(t *testing.T) int64 {
	t.Helper()
	out := r.kbridge(t, "status", "--brokers", strings.Join(r.brokers, ","), "--group", r.group, "--topics", r.topic, "--json")
	var st struct {
		Totals struct {
			KafkaLag int64 `json:"kafka_lag"`
		} `json:"totals"`
		Errors []string `json:"errors"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || len(st.Errors) > 0 {
		t.Fatalf("kbridge status --json: %v, errors %q\n%s", err, st.Errors, out)
	}
	return st.Totals.KafkaLag
}

// TestRedisTLS runs ingest, worker, status and dlq over rediss:// against a
// Redis that serves TLS only and asks for a client certificate
// (tls-auth-clients yes), trusting the test CA with --redis-tls-ca and
// presenting --redis-tls-cert/--redis-tls-key: every record is handled and
// committed to the log end.
func TestRedisTLS(t *testing.T) {
	testenv.RequireReal(t, "a redis-server with TLS of the test's own")
	rs := startRedis(t, redisOpts{tls: true, authClients: "yes"})
	r := newPipeline(t, 3, 300, append([]string{"--redis-url", rs.url("")}, rs.tlsFlags()...)...)
	r.start(t, nil)
	took := r.waitCommitted(t, 60*time.Second)
	if n, first := r.ledger.missing(t, r.ends); n != 0 {
		t.Errorf("%d records never handled (first %s)", n, first)
	}
	lag := r.statusLag(t)
	if lag != 0 {
		t.Errorf("kbridge status over TLS: lag %d, want 0", lag)
	}
	r.kbridge(t, "dlq", "list")
	r.worker.stop(t)
	r.ingest.stop(t)
	// The streams are on the TLS server, nowhere else.
	n, err := rs.admin(t).Exists(context.Background(), r.prefix+":{"+r.topic+":0}").Result()
	if err != nil || n != 1 {
		t.Errorf("stream of partition 0 on the TLS Redis: EXISTS = %d, %v", n, err)
	}
	t.Logf("rediss:// with a client certificate (tls-auth-clients yes): %d records over %d partitions handled and committed in %v; status lag %d",
		r.records, r.partitions, took.Round(time.Millisecond), lag)
}

// TestRedisACLUser runs every kbridge command against a Redis where kbridge
// logs in as an ACL user that may touch only the keys of its prefix and run
// only aclCommands, with its password in a file (--redis-password-file), over
// TLS with a client certificate. A poison record goes to the dead letters and
// is replayed once fixed (dlq list, show, replay; then list and replay
// --from-kafka, from its copy in the dead-letter topic). A group another program left above a stream's top
// is set back by the ingest (XGROUP SETID) and holds that partition's commit
// until `kbridge groups remove` destroys it (after `groups list`). Afterwards
// INFO commandstats (reset before the run; only kbridge talked to the server
// during it, the test's setup and checks aside) lists every command the run
// called: each must be in aclCommands, and none may have been rejected
// (NOPERM).
func TestRedisACLUser(t *testing.T) {
	testenv.RequireReal(t, "a redis-server with ACLs of the test's own")
	adminPW, userPW := secret("redis-admin-pw"), secret("redis-kbridge-pw")
	rs := startRedis(t, redisOpts{tls: true, authClients: "yes", password: adminPW})
	admin := rs.admin(t)
	ctx := context.Background()
	r := newPipeline(t, 3, 300, append([]string{"--redis-url", rs.url("kbridge"), "--redis-password-file", writeSecret(t, userPW)}, rs.tlsFlags()...)...)
	rule := aclRule(r.prefix, aclCommands)
	rule = append(rule, ">"+userPW)
	if err := admin.Do(ctx, append([]any{"acl", "setuser", "kbridge"}, rule...)...).Err(); err != nil {
		t.Fatalf("ACL SETUSER kbridge: %v", err)
	}

	// A group left above the top of partition 0's stream (by hand, or by a
	// program that deleted entries and lowered the top with XSETID).
	s0 := wire.StreamKey(r.prefix, r.topic, 0)
	if err := admin.XGroupCreateMkStream(ctx, s0, "held", "999999999-1").Err(); err != nil {
		t.Fatalf("XGROUP CREATE held above the top: %v", err)
	}
	// A poison record: handling 0/7 fails while the marker file exists.
	poison := filepath.Join(t.TempDir(), "poison")
	if err := os.WriteFile(poison, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := admin.ConfigResetStat(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	r.start(t, []string{"E2E_POISON=" + poison}, "--max-deliveries", "2", "--backoff-min", "10ms", "--backoff-max", "50ms",
		"--visibility-timeout", "2s")
	// The ingest sets "held" back to the top; it then holds partition 0's
	// commit (every group on a stream counts) while the rest flows.
	var heldAt string
	testenv.Eventually(t, 30*time.Second, func() bool {
		gs, _ := admin.XInfoGroups(ctx, s0).Result()
		for _, g := range gs {
			if g.Name == "held" {
				heldAt = g.LastDeliveredID
			}
		}
		return heldAt != "" && heldAt != "999999999-1"
	}, "the ingest did not set back the group above the top (last-delivered-id %s)", heldAt)
	testenv.Eventually(t, 60*time.Second, func() bool {
		n, _ := r.ledger.missing(t, r.ends)
		c := testenv.Committed(t, r.brokers, r.group, r.topic, r.partitions)
		return n == 1 && r.worker.has("dead-lettered") && c[1] == r.ends[1] && c[2] == r.ends[2]
	}, "the records (but the poison one) were not all handled and committed on partitions 1 and 2")
	if c := testenv.Committed(t, r.brokers, r.group, r.topic, r.partitions); c[0] >= r.ends[0] {
		t.Errorf("partition 0 committed %d (log end %d) while the group held had delivered nothing", c[0], r.ends[0])
	}
	if out := r.kbridge(t, "groups", "list"); !strings.Contains(out, "held") {
		t.Errorf("kbridge groups list does not show the group held:\n%s", out)
	}
	r.kbridge(t, "groups", "remove", "--group", "held", "--yes")
	took := r.waitCommitted(t, 60*time.Second)
	list := r.kbridge(t, "dlq", "list", "--json")
	if !strings.Contains(list, `"offset":7`) && !strings.Contains(list, `"offset": 7`) {
		t.Errorf("kbridge dlq list --json: want the dead letter of offset 7\n%s", list)
	}
	// The other dead-letter commands, so that their Redis commands are in
	// the stats too: show (the export state: XPENDING, the stubs hash) and,
	// below, the Kafka side (the replayed set: HGETALL, HSET, PEXPIRE).
	var dl struct {
		Ref string `json:"ref"`
	}
	if err := json.Unmarshal([]byte(strings.SplitN(strings.TrimSpace(list), "\n", 2)[0]), &dl); err != nil || dl.Ref == "" {
		t.Fatalf("kbridge dlq list --json: no ref (%v)\n%s", err, list)
	}
	r.kbridge(t, "dlq", "show", dl.Ref)
	if err := os.Remove(poison); err != nil {
		t.Fatal(err)
	}
	r.kbridge(t, "dlq", "replay", "--all")
	testenv.Eventually(t, 30*time.Second, func() bool { return r.ledger.handled(t)[[2]int64{0, 7}] > 0 },
		"the replayed dead letter 0/7 was not handled")
	kafkaArgs := []string{"--topic", r.topic, "--brokers", strings.Join(r.brokers, ",")}
	if out := r.kbridge(t, append([]string{"dlq", "list", "--from-kafka"}, kafkaArgs...)...); !strings.Contains(out, r.topic+".dlq:0@") {
		t.Errorf("kbridge dlq list --from-kafka: want the dead letter of %s in %s.dlq\n%s", dl.Ref, r.topic, out)
	}
	before := r.ledger.handled(t)[[2]int64{0, 7}]
	r.kbridge(t, append([]string{"dlq", "replay", "--from-kafka", "--all", "--again"}, kafkaArgs...)...)
	testenv.Eventually(t, 30*time.Second, func() bool { return r.ledger.handled(t)[[2]int64{0, 7}] > before },
		"the dead letter 0/7 replayed from Kafka was not handled")
	if n, first := r.ledger.missing(t, r.ends); n != 0 {
		t.Errorf("%d records never handled (first %s)", n, first)
	}
	lag := r.statusLag(t)
	r.worker.stop(t)
	r.ingest.stop(t)

	used, rejected := commandStats(t, admin)
	// The test's own CONFIG RESETSTAT counts itself; CONFIG GET is the
	// ingest's maxmemory-policy check, which the rule leaves out on purpose
	// (it would reveal the server's configuration, passwords included): the
	// ingest must warn and go on. HELLO (go-redis logs in with HELLO 3 AUTH)
	// and AUTH need no permission.
	used = slices.DeleteFunc(used, func(c string) bool {
		return c == "config|resetstat" || c == "config|get" || c == "hello" || c == "auth"
	})
	delete(rejected, "config|get")
	if !r.ingest.has("maxmemory-policy") {
		t.Errorf("the ingest did not say that it could not check maxmemory-policy (CONFIG GET is not in the rule)")
	}
	var extra []string
	for _, c := range used {
		if !slices.Contains(aclCommands, c) {
			extra = append(extra, c)
		}
	}
	var unused []string
	for _, c := range aclCommands {
		if !slices.Contains(used, c) {
			unused = append(unused, c)
		}
	}
	t.Logf("commands the run called (%d): %s", len(used), strings.Join(used, " "))
	t.Logf("in the rule but not called in this run (other code paths): %s", strings.Join(unused, " "))
	if len(extra) > 0 {
		t.Errorf("kbridge called commands outside the documented ACL rule: %s", strings.Join(extra, " "))
	}
	if len(rejected) > 0 {
		t.Errorf("commands rejected (NOPERM or similar): %v", rejected)
	}
	for _, p := range []*proc{r.ingest, r.worker} {
		if l := p.line("NOPERM"); l != "" {
			t.Errorf("%s logged a NOPERM error: %s", p.name, l)
		}
	}
	t.Logf("ACL user ~%s:* with %d commands, TLS + client certificate, password from a file: %d records committed (%v after groups remove), a dead letter replayed, a group set back from 999999999-1 to %s and removed, status lag %d",
		r.prefix, len(aclCommands), r.records, took.Round(time.Millisecond), heldAt, lag)
}

// commandStats reads INFO commandstats: the commands called (sorted,
// subcommands as "xinfo|groups") and those with rejected calls.
func commandStats(t *testing.T, rdb *redis.Client) (used []string, rejected map[string]int) {
	t.Helper()
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	rejected = map[string]int{}
	for _, line := range strings.Split(info, "\n") {
		line = strings.TrimSpace(line)
		name, rest, ok := strings.Cut(line, ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		name = strings.TrimPrefix(name, "cmdstat_")
		used = append(used, name)
		for _, kv := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(kv, "rejected_calls="); ok {
				if n, _ := strconv.Atoi(v); n > 0 {
					rejected[name] = n
				}
			}
		}
	}
	slices.Sort(used)
	return used, rejected
}

// TestRedisBadCredentials: against a Redis with TLS, client certificates and
// an ACL user, a wrong password, a CA that did not sign the server's
// certificate, a missing client certificate, or an ACL rule without a
// command kbridge needs make each long-running command (ingest, worker) exit
// non-zero with a message naming the cause, and the one-shot ones (status,
// dlq list) too; the ingest commits nothing.
func TestRedisBadCredentials(t *testing.T) {
	testenv.RequireReal(t, "a redis-server with TLS and ACLs of the test's own")
	adminPW, userPW := secret("redis-admin-pw"), secret("redis-kbridge-pw")
	rs := startRedis(t, redisOpts{tls: true, authClients: "yes", password: adminPW})
	admin := rs.admin(t)
	ctx := context.Background()
	brokers := testenv.Kafka(t)
	otherCA := filepath.Join(certs(t), "ca.crt")
	good, wrong := writeSecret(t, userPW), writeSecret(t, secret("wrong"))
	ca := filepath.Join(rs.tlsDir, "ca.crt")
	cert, key := filepath.Join(rs.tlsDir, "client.crt"), filepath.Join(rs.tlsDir, "client.key")
	for _, tc := range []struct {
		name  string
		user  string   // ACL user kbridge logs in as
		omit  []string // commands left out of that user's rule
		flags []string // Redis flags after --redis-url
		why   string   // regexp
	}{
		{"wrong-password", "kbridge", nil, []string{"--redis-password-file", wrong, "--redis-tls-ca", ca, "--redis-tls-cert", cert, "--redis-tls-key", key}, "WRONGPASS"},
		{"wrong-CA", "kbridge", nil, []string{"--redis-password-file", good, "--redis-tls-ca", otherCA, "--redis-tls-cert", cert, "--redis-tls-key", key}, "certificate signed by unknown authority"},
		{"no-client-certificate", "kbridge", nil, []string{"--redis-password-file", good, "--redis-tls-ca", ca}, "certificate required"},
		{"ACL-without-xadd-and-smembers", "kbridge-limited", []string{"xadd", "smembers"},
			[]string{"--redis-password-file", good, "--redis-tls-ca", ca, "--redis-tls-cert", cert, "--redis-tls-key", key},
			// NOPERM, or from inside a script: "ERR The user executing the script can't run this command"
			"NOPERM|can't run this command"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topic, group, prefix := testenv.Name(t), testenv.Name(t), testenv.Name(t)
			var cmds []string
			for _, c := range aclCommands {
				if !slices.Contains(tc.omit, c) {
					cmds = append(cmds, c)
				}
			}
			if err := admin.Do(ctx, append(append([]any{"acl", "setuser", tc.user}, aclRule(prefix, cmds)...), ">"+userPW)...).Err(); err != nil {
				t.Fatal(err)
			}
			testenv.CreateTopic(t, brokers, topic, 2)
			testenv.Produce(t, brokers, topic, 0, 20)
			redisArgs := append([]string{"--redis-url", rs.url(tc.user)}, tc.flags...)
			redisArgs = append(redisArgs, "--prefix", prefix)
			in := startKbridge(t, "ingest", nil, append(append(slices.Clone(redisArgs), "ingest", "--brokers", strings.Join(brokers, ","),
				"--topics", topic, "--group", group), fastIngest...)...)
			w := startKbridge(t, "worker", nil, append(slices.Clone(redisArgs), "worker", "--exec", "true")...)
			expectFatal(t, 30*time.Second, tc.why, in, w)
			for _, args := range [][]string{{"status", "--brokers", strings.Join(brokers, ","), "--group", group, "--topics", topic}, {"dlq", "list"}} {
				cmd := exec.Command(testenv.BuildKbridge(t), append(slices.Clone(redisArgs), args...)...)
				cmd.Env = cleanEnv()
				out, _ := cmd.CombinedOutput()
				if code := cmd.ProcessState.ExitCode(); code == 0 || !regexp.MustCompile(tc.why).Match(out) {
					t.Errorf("kbridge %s: exit %d, output %q; want a non-zero exit and %q", args[0], code, out, tc.why)
				}
			}
			for p, off := range testenv.Committed(t, brokers, group, topic, 2) {
				if off >= 0 {
					t.Errorf("partition %d: committed %d, want nothing committed", p, off)
				}
			}
		})
	}
}
