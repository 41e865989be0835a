package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

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
