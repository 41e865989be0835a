package worker

import (
	"os/exec"
	"strings"
	"testing"
)

// TestCLIBadInput: "kbridge worker" and "kbridge dlq" exit 2 with the
// reason on bad input, before touching Redis.
func TestCLIBadInput(t *testing.T) {
	bin := kbridgeBin(t)
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"no handler", []string{"worker"}, "give --exec CMD or --http URL"},
		{"both handlers", []string{"worker", "--exec", "true", "--http", "http://x"}, "exclude each other"},
		{"bad url", []string{"worker", "--http", "ftp://x"}, "want an http:// or https:// URL"},
		{"zero concurrency", []string{"worker", "--exec", "true", "--concurrency", "0", "--max-deliveries", "-1"}, "--concurrency 0 must be at least 1"},
		{"bad read-ahead and transient time", []string{"worker", "--exec", "true", "--read-ahead", "0", "--max-transient-time", "0s"}, "--read-ahead 0 must be at least 1\n--max-transient-time 0s must be above 0"},
		{"stray argument", []string{"worker", "--exec", "true", "extra"}, "takes no arguments"},
		{"bad duration", []string{"worker", "--exec", "true", "--visibility-timeout", "soon"}, "visibility-timeout"},
		{"replay nothing", []string{"dlq", "replay"}, "or --all"},
		{"replay bad ref", []string{"dlq", "replay", "orders-3"}, "want <topic>:<partition>/<id>"},
		{"show nothing", []string{"dlq", "show"}, "give one or more REFs"},
		{"partition without topic", []string{"dlq", "list", "--partition", "1"}, "--partition needs --topic"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(bin, append([]string{"--redis-url", "redis://127.0.0.1:1/0"}, tt.args...)...)
			out, err := cmd.CombinedOutput()
			if code := cmd.ProcessState.ExitCode(); code != 2 || !strings.Contains(string(out), tt.want) {
				t.Errorf("kbridge %v: exit %d (%v), output %q; want exit 2 and %q", tt.args, code, err, out, tt.want)
			}
		})
	}
}
