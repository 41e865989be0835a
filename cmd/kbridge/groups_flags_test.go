package main

import (
	"strings"
	"testing"
)

// TestGroupsReportsEveryProblem: "kbridge groups" reports every problem of
// its flags and arguments and of the Redis flags in one message, exit 2,
// before it connects to anything.
func TestGroupsReportsEveryProblem(t *testing.T) {
	for _, tt := range []struct {
		name string
		args []string
		want []string
	}{
		{"list", []string{"--redis-tls-ca", "/nonexistent/ca.pem", "groups", "list", "--topics", "orders,a b", "extra"},
			[]string{`list takes no arguments, got ["extra"]`, `--topics: "a b" is not a valid Kafka topic name`, "--redis-tls-ca needs a rediss:// URL"}},
		{"remove", []string{"groups", "remove", "--topics", "x:y", "--yes", "--redis-cluster-reload-interval", "0s", "audit", "--group", "audit"},
			[]string{`remove takes no arguments, got ["audit" "--group" "audit"]`, `flags after "audit" are not read`, `--topics: "x:y" is not a valid Kafka topic name`,
				"--group is required", "--redis-cluster-reload-interval needs --redis-cluster"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"--redis-url", "redis://127.0.0.1:1/0"}, tt.args...)
			out, errs, code := runCLI(t, args...)
			var missing []string
			for _, w := range tt.want {
				if !strings.Contains(errs, w) {
					missing = append(missing, w)
				}
			}
			if code != 2 || len(missing) > 0 {
				t.Fatalf("kbridge %q: exit %d, stdout %q, stderr:\n%s\nwant exit 2 and every reason; missing %q", tt.args, code, out, errs, missing)
			}
			if n := strings.Count(errs, "\n  - "); n != len(tt.want) {
				t.Errorf("kbridge %q: %d reasons, want %d:\n%s", tt.args, n, len(tt.want), errs)
			}
			t.Logf("exit 2 with %d reasons in one message", strings.Count(errs, "\n  - "))
		})
	}
}
