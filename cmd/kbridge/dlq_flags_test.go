package main

import (
	"strings"
	"testing"
)

// TestDLQReportsEveryProblem: "kbridge dlq" reports every problem of its
// flags and arguments (its own, the Redis flags', the Kafka flags' where it
// reads Kafka) in one message, exit 2, before it connects to anything (the
// Redis URL here reaches nothing).
func TestDLQReportsEveryProblem(t *testing.T) {
	for _, tt := range []struct {
		name string
		args []string
		want []string
	}{
		{"list", []string{"--redis-cluster-reload-interval", "2s", "dlq", "list", "--topic", "a b", "--partition", "-1", "--limit", "-3", "stray"},
			[]string{`list takes no arguments, got ["stray"]`, `--topic "a b" is not a valid Kafka topic name`, "--partition -1 must not be negative",
				"--limit -3 must not be negative", "--redis-cluster-reload-interval needs --redis-cluster"}},
		{"list from kafka", []string{"dlq", "list", "--from-kafka", "--partition", "2", "--brokers", "", "--kafka-tls-insecure", "--dlq-topic", "dead letters of {topic}"},
			[]string{"--partition needs --topic", "no Kafka brokers (--brokers)", "--kafka-tls-insecure is set but --kafka-tls is not",
				`--dlq-topic "dead letters of {topic}" gives "dead letters of orders"`}},
		{"show", []string{"dlq", "show", "--kafka-sasl", "plain", "nonsense", "orders.dlq:x@y"},
			[]string{"nonsense", "orders.dlq:x@y", "--kafka-sasl plain needs --kafka-username", "--kafka-sasl plain needs a password"}},
		{"show nothing", []string{"dlq", "show"}, []string{"give one or more REFs"}},
		{"replay", []string{"dlq", "replay", "--all", "--group", "g", "--again", "--topic", "bad/topic", "--brokers", "", "orders:0/1-0", "orders.dlq:0@5"},
			[]string{"give REFs or --all, not both", `--topic "bad/topic" is not a valid Kafka topic name`, "no Kafka brokers"}},
		{"replay refs with filters", []string{"dlq", "replay", "--topic", "orders", "--again", "--from-kafka", "orders:0/1-0"},
			[]string{"--topic, --partition and --group go with --all", "--from-kafka goes with --all"}},
		{"replay again from redis", []string{"dlq", "replay", "--again", "--partition", "-2", "orders:0/1-0"},
			[]string{"--again is for dead letters read from Kafka", "--partition needs --topic", "--partition -2 must not be negative",
				"--topic, --partition and --group go with --all"}},
		{"delete", []string{"--redis-url", "redis://127.0.0.1:1/0?skip_verify=true", "dlq", "delete", "orders.dlq:0@5", "junk", "--force"},
			[]string{"orders.dlq:0@5 is a dead letter in Kafka: only show and replay take those", "junk", "--force after the first REF: not read as flags; flags go before the REFs (kbridge dlq delete --force ... REF...)",
				"?skip_verify in --redis-url needs a rediss:// URL"}},
		{"delete nothing", []string{"dlq", "delete", "--group", "g"}, []string{"give the REFs to delete"}},
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
