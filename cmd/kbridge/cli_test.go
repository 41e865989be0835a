package main

import (
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// TestEveryCommandHasHelpExamplesAndEnvVars: each subcommand's --help shows
// examples, and every flag (global or not) can be set from the environment.
func TestEveryCommandHasHelpExamplesAndEnvVars(t *testing.T) {
	app := newApp()
	checkFlags := func(where string, fs []cli.Flag) {
		for _, f := range fs {
			e, ok := f.(interface{ GetEnvVars() []string })
			if !ok || len(e.GetEnvVars()) == 0 {
				t.Errorf("%s: flag --%s has no environment variable", where, f.Names()[0])
			}
		}
	}
	checkFlags("kbridge", app.Flags)
	var walk func(path []string, cmds []*cli.Command, parentHasExamples bool)
	walk = func(path []string, cmds []*cli.Command, parentHasExamples bool) {
		for _, c := range cmds {
			p := append(append([]string(nil), path...), c.Name)
			name := strings.Join(p, " ")
			checkFlags("kbridge "+name, c.Flags)
			out, errs, code := runCLI(t, append(p, "--help")...)
			has := strings.Contains(out, "Examples:")
			if code != 0 || (!has && !parentHasExamples) {
				t.Errorf("kbridge %s --help: exit %d, examples %v\n%s%s", name, code, has, out, errs)
			}
			walk(p, c.Subcommands, has)
		}
	}
	walk(nil, app.Commands, false)
	for _, want := range []string{"demo", "ingest", "worker", "status", "dlq", "produce"} {
		if app.Command(want) == nil {
			t.Errorf("no command %s", want)
		}
	}
}

// TestBadInputExits2: bad flags of the commands of this package exit 2 with
// the reason, before connecting to anything.
func TestBadInputExits2(t *testing.T) {
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"produce without topic", []string{"produce"}, "--topic is required"},
		{"produce negative rate", []string{"produce", "--topic", "t", "--rate", "-1", "--size", "-5"}, "--rate -1 must not be negative"},
		{"produce every problem", []string{"produce", "--topic", "t", "--rate", "-1", "--size", "-5"}, "--size -5"},
		{"produce forever", []string{"produce", "--topic", "t", "--count", "0"}, "would write forever"},
		{"produce bad duration", []string{"produce", "--topic", "t", "--duration", "soon"}, "duration"},
		{"status bad interval", []string{"status", "--interval", "0s"}, "--interval 0s must be above 0"},
		{"status argument", []string{"status", "orders"}, "takes no arguments"},
		{"status bad sasl", []string{"status", "--kafka-sasl", "kerberos"}, "--kafka-sasl"},
		{"demo no partitions", []string{"demo", "--partitions", "0"}, "--partitions 0 must be between 1 and 64"},
		{"demo short phase", []string{"demo", "--phase", "1ms"}, "--phase 1ms"},
		{"demo bad redis url", []string{"demo", "--redis-url", "http://x"}, "--redis-url"},
		{"demo unknown flag", []string{"demo", "--bogus"}, "bogus"},
		{"ingest bad metrics addr", []string{"ingest", "--topics", "t", "--metrics-addr", "9100"}, "--metrics-addr \"9100\": want HOST:PORT"},
		{"worker bad metrics addr", []string{"worker", "--exec", "true", "--metrics-addr", "localhost"}, "--metrics-addr \"localhost\": want HOST:PORT"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, errs, code := runCLI(t, append([]string{"--redis-url", "redis://127.0.0.1:1/0"}, tt.args...)...)
			if code != 2 || !strings.Contains(errs, tt.want) {
				t.Errorf("kbridge %v: exit %d, stderr %q, stdout %q; want exit 2 and %q", tt.args, code, errs, out, tt.want)
			}
		})
	}
}

// TestWorkerBadFlagsEveryReason: kbridge worker reports every problem of
// its flags at once — the handler flags (--exec/--http) among the others —
// and exits 2 before connecting to anything.
func TestWorkerBadFlagsEveryReason(t *testing.T) {
	for _, tt := range []struct {
		name string
		args []string
		want []string
	}{
		{"exec and http", []string{"worker", "--exec", "true", "--http", "ftp://h", "--handler-timeout", "-1s", "--concurrency", "0",
			"--metrics-addr", "localhost", "--log-level", "loud", "stray"},
			[]string{"--exec and --http exclude each other", "--handler-timeout -1s must not be negative", "--concurrency 0 must be at least 1",
				"--metrics-addr \"localhost\"", "--log-level \"loud\"", "takes no arguments"}},
		{"bad http", []string{"worker", "--http", "localhost:8080/in", "--handler-timeout", "0s", "--max-deliveries", "0", "--read-ahead", "-1"},
			[]string{"--http localhost:8080/in: want an http:// or https:// URL", "--handler-timeout must be above 0 with --http",
				"--max-deliveries 0 must be at least 1", "--read-ahead -1 must be at least 1"}},
		{"no handler", []string{"worker", "--visibility-timeout", "0s", "--redis-tls-cert", "/nonexistent/c.crt"},
			[]string{"give --exec CMD or --http URL", "--visibility-timeout 0s must be above 0", "--redis-tls-cert needs a rediss:// URL"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, errs, code := runCLI(t, append([]string{"--redis-url", "redis://127.0.0.1:1/0"}, tt.args...)...)
			if code != 2 {
				t.Errorf("kbridge %v: exit %d, want 2; stderr %q, stdout %q", tt.args, code, errs, out)
			}
			for _, w := range tt.want {
				if !strings.Contains(errs, w) {
					t.Errorf("kbridge %v: stderr %q; want it to contain %q", tt.args, errs, w)
				}
			}
			t.Logf("%s: exit %d, %d reasons: %q", tt.name, code, strings.Count(strings.TrimSpace(errs), "\n")+1, errs)
		})
	}
}
