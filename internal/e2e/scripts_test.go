package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl/scram"

	"github.com/kbridge/kbridge/internal/testenv"
)

// TestRedisScriptTLS: scripts/redis.sh with TLS takes a relative
// REDIS_TLS_DIR and REDIS_DATA_DIR (redis-server changes its directory
// before it reads the certificates), and a server that cannot start (a key
// that does not match its certificate) is reported as soon as it exits,
// not after the PING timeout.
func TestRedisScriptTLS(t *testing.T) {
	if !testenv.RealRedis() {
		t.Skip("needs redis-server (scripts/test.sh installs it and sets REDIS_ADDR)")
	}
	work := t.TempDir()
	port := strconv.Itoa(freePorts(t, 1)[0])
	run := func(env []string, args ...string) (string, error) {
		cmd := exec.Command("bash", append([]string{filepath.Join(testenv.ScriptsDir(), "redis.sh")}, args...)...)
		cmd.Dir = work
		cmd.Env = append(os.Environ(), append([]string{"REDIS_PORT=" + port}, env...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	good := []string{"REDIS_DATA_DIR=data", "REDIS_TLS=1", "REDIS_TLS_DIR=tls"}
	began := time.Now()
	if out, err := run(good, "start"); err != nil {
		t.Fatalf("redis.sh start with relative dirs: %v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = run([]string{"REDIS_DATA_DIR=data"}, "stop") })
	started := time.Since(began)
	if out, err := run([]string{"REDIS_DATA_DIR=data"}, "cli", "ping"); err != nil || strings.TrimSpace(out) != "PONG" {
		t.Fatalf("redis.sh cli ping over TLS (the data dir remembers the TLS dir): %q, %v", out, err)
	}
	if out, err := run([]string{"REDIS_DATA_DIR=data"}, "stop"); err != nil {
		t.Fatalf("redis.sh stop: %v\n%s", err, out)
	}

	// The client's key is not the server certificate's.
	key, err := os.ReadFile(filepath.Join(work, "tls", "client.key"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(work, "tls", "server.key"), key, 0o600); err != nil {
		t.Fatal(err)
	}
	began = time.Now()
	out, err := run([]string{"REDIS_DATA_DIR=data2", "REDIS_TLS=1", "REDIS_TLS_DIR=tls", "REDIS_START_TIMEOUT=30"}, "start")
	failed := time.Since(began)
	if err == nil {
		t.Fatalf("redis.sh start with a mismatched key succeeded:\n%s", out)
	}
	if !strings.Contains(out, "exited during startup") || !strings.Contains(out, "key values mismatch") {
		t.Errorf("redis.sh start with a mismatched key: want the server's reason and \"exited during startup\"\n%s", out)
	}
	if failed > 10*time.Second {
		t.Errorf("redis.sh took %v to report a server that exited at once (REDIS_START_TIMEOUT=30)", failed)
	}
	t.Logf("relative REDIS_TLS_DIR: started in %v; a mismatched key reported in %v", started.Round(time.Millisecond), failed.Round(time.Millisecond))
}

// TestKafkaScriptSecurity: scripts/kafka.sh on the package's secured broker.
// Its server.properties (PLAIN passwords) and scram-users are mode 0600 and
// the SCRAM passwords given at format time are in no file left behind;
// "start" on the running broker with the same environment says ready, with
// another user list it stops at once and names the setting that differs
// (no password); and SCRAM credentials that differ from what the
// environment asks for (here: the record of what was written says another
// password) are written again through the admin listener, after which the
// user logs in.
func TestKafkaScriptSecurity(t *testing.T) {
	k := secureKafka(t)
	for _, f := range []string{"server.properties", "scram-users"} {
		st, err := os.Stat(filepath.Join(k.dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", f, st.Mode().Perm())
		}
	}
	entries, _ := os.ReadDir(k.dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".format-args") || strings.HasPrefix(e.Name(), ".scram") {
			t.Errorf("%s left behind in the data dir", e.Name())
		}
	}
	if log, err := os.ReadFile(filepath.Join(k.dir, "format.log")); err == nil && strings.Contains(string(log), k.users["kbridge"]) {
		t.Errorf("format.log holds a SCRAM password")
	}

	began := time.Now()
	if out, err := script("kafka.sh", k.env(), "start"); err != nil || !strings.Contains(out, "kafka ready") {
		t.Fatalf("kafka.sh start on the running broker, same environment: %v\n%s", err, out)
	}
	same := time.Since(began)

	other := secret("other-pw")
	env := append(k.env(), "KAFKA_SASL_USERS=kbridge:"+k.users["kbridge"]+",admin:"+k.users["admin"]+",other:"+other)
	began = time.Now()
	out, err := script("kafka.sh", env, "start")
	if err == nil {
		t.Fatalf("kafka.sh start with another user list on the running broker succeeded:\n%s", out)
	}
	if !strings.Contains(out, "listener.name.sasl_plaintext.plain.sasl.jaas.config") || !strings.Contains(out, "restart") {
		t.Errorf("kafka.sh start with another user list: want the setting named and restart suggested\n%s", out)
	}
	for _, pw := range []string{other, k.users["kbridge"], k.users["admin"]} {
		if strings.Contains(out, pw) {
			t.Errorf("kafka.sh printed a password:\n%s", out)
		}
	}
	refused := time.Since(began)

	// The record says kbridge's SCRAM password is another one: start writes
	// the environment's again (as after a restart with a changed password).
	rec := filepath.Join(k.dir, "scram-users")
	b, err := os.ReadFile(rec)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if strings.HasPrefix(l, "kbridge ") {
			l = "kbridge 0000"
		}
		lines = append(lines, l)
	}
	if err := os.WriteFile(rec, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	began = time.Now()
	out, err = script("kafka.sh", k.env(), "start")
	if err != nil || !strings.Contains(out, "SCRAM users brought in line with KAFKA_SASL_USERS: kbridge") {
		t.Fatalf("kafka.sh start with a changed SCRAM password: %v\n%s", err, out)
	}
	synced := time.Since(began)
	if after, _ := os.ReadFile(rec); string(after) != string(b) {
		t.Errorf("scram-users after the sync:\n%s\nwant\n%s", after, b)
	}
	for _, mech := range []scram.Algorithm{scram.SHA256, scram.SHA512} {
		if err := scramLogin(k, mech, "kbridge", k.users["kbridge"]); err != nil {
			t.Errorf("SCRAM login (%v) after the credentials were written again: %v", mech.Name(), err)
		}
	}
	t.Logf("kafka.sh start on the running broker: same settings → ready in %v; another user list → refused in %v; SCRAM credentials written again in %v",
		same.Round(time.Millisecond), refused.Round(time.Millisecond), synced.Round(time.Millisecond))
}

// scramLogin logs in to the SASL_SSL listener and reads metadata.
func scramLogin(k *kafkaServer, algo scram.Algorithm, user, pw string) error {
	mech, err := scram.Mechanism(algo, user, pw)
	if err != nil {
		return err
	}
	ca, err := os.ReadFile(filepath.Join(k.tlsDir, "ca.crt"))
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	cl := &kafka.Client{Addr: kafka.TCP(addr(k.saslSSL)), Timeout: 10 * time.Second,
		Transport: &kafka.Transport{SASL: mech, TLS: &tls.Config{RootCAs: pool}}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err = cl.Metadata(ctx, &kafka.MetadataRequest{})
	return err
}
