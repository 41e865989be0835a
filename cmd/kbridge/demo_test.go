package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kbridge/kbridge/internal/testenv"
)

var demoLine = regexp.MustCompile(`^produced=(\d+) processed=(\d+) lost=(\d+) duplicates=(\d+)$`)

// TestDemoNewcomer runs "kbridge demo" exactly as the README tells a
// newcomer to: no flags, no services. It must end by itself within a
// minute, having checked every record: lost=0.
func TestDemoNewcomer(t *testing.T) {
	bin := testenv.BuildKbridge(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "demo")
	cmd.Env = cleanEnv()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start)
	t.Logf("kbridge demo took %v; stderr (progress):\n%s\nstdout:\n%s", took.Round(time.Millisecond), errb.String(), out.String())
	if err != nil {
		t.Fatalf("kbridge demo: %v", err)
	}
	if took > time.Minute {
		t.Errorf("kbridge demo took %v, want under a minute", took)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	m := demoLine.FindStringSubmatch(lines[len(lines)-1])
	if m == nil {
		t.Fatalf("last line %q, want produced=N processed=N lost=0 duplicates=D", lines[len(lines)-1])
	}
	produced, _ := strconv.Atoi(m[1])
	if m[3] != "0" || m[1] != m[2] || produced < 1000 {
		t.Errorf("last line %q: want lost=0 and processed = produced (at least 1000)", m[0])
	}
	for _, want := range []string{"phase 1/3", "phase 2/3", "phase 3/3", "paused 4/4", "backlog", "commit lag"} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("progress has no %q", want)
		}
	}
}

// TestDemoJSON runs a short demo with --json, on the real services when
// they are configured (--brokers, --redis-url), else on the stand-ins.
func TestDemoJSON(t *testing.T) {
	bin := testenv.BuildKbridge(t)
	args := []string{"demo", "--json", "--phase", "1s", "--rate", "300"}
	if testenv.RealKafka() {
		args = append(args, "--brokers", os.Getenv("KAFKA_BROKERS"))
	}
	if testenv.RealRedis() {
		args = append(args, "--redis-url", "redis://"+os.Getenv("REDIS_ADDR")+"/0")
	}
	t.Log(testenv.String())
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = cleanEnv()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("kbridge %v: %v\nstdout:\n%s\nstderr:\n%s", args, err, out.String(), errb.String())
	}
	var sum demoSummary
	if err := json.Unmarshal(out.Bytes(), &sum); err != nil {
		t.Fatalf("stdout is not the JSON summary: %v\n%s", err, out.String())
	}
	t.Logf("summary: %s", out.String())
	if !sum.OK || sum.Lost != 0 || sum.Processed != sum.Produced || sum.Produced == 0 || !sum.CommitsAtEnd || sum.LogEnd != sum.Produced {
		t.Errorf("summary %+v: want ok, lost 0, processed = produced = log end = committed", sum)
	}
}

// cleanEnv is the environment without KBRIDGE_ variables, as a newcomer has.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KBRIDGE_") {
			env = append(env, kv)
		}
	}
	return env
}

// TestDemoRefusesFlagsItCannotHonour: every flag "kbridge demo" would
// otherwise accept and ignore — the global --redis-cluster and --prefix
// (before or after "demo"), the log flags without --verbose, --keep on the
// in-process services — is refused, all in one message, exit 2, before
// anything starts.
func TestDemoRefusesFlagsItCannotHonour(t *testing.T) {
	for _, tt := range []struct {
		name string
		args []string
		want []string
	}{
		{"after demo", []string{"demo", "--redis-cluster", "--prefix", "mine", "--log-level", "debug", "--log-format", "json", "--keep"},
			[]string{"--redis-cluster is not taken here", "--prefix is not taken here", "--log-level goes with --verbose",
				"--log-format goes with --verbose", "--keep goes with --brokers or --redis-url"}},
		{"before demo", []string{"--redis-cluster", "--prefix", "mine", "demo", "--redis-url", "redis://127.0.0.1:1/0"},
			[]string{"--redis-cluster is not taken here", "--prefix is not taken here"}},
		{"bad log level with verbose", []string{"demo", "--verbose", "--log-level", "loud"}, []string{`--log-level "loud"`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, errs, code := runCLI(t, tt.args...)
			var missing []string
			for _, w := range tt.want {
				if !strings.Contains(errs, w) {
					missing = append(missing, w)
				}
			}
			if code != 2 || len(missing) > 0 || strings.Contains(out+errs, "phase 1/3") {
				t.Fatalf("kbridge %q: exit %d, stdout %q, stderr:\n%s\nwant exit 2 before anything runs, and every reason; missing %q", tt.args, code, out, errs, missing)
			}
			if n := strings.Count(errs, "\n  - "); n != len(tt.want) {
				t.Errorf("kbridge %q: %d reasons, want %d:\n%s", tt.args, n, len(tt.want), errs)
			}
			t.Logf("exit 2 with %d reasons in one message", strings.Count(errs, "\n  - "))
		})
	}
}
