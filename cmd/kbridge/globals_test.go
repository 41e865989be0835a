package main

import (
	"testing"

	"github.com/urfave/cli/v2"
)

// TestGlobalFlagsBeforeOrAfterCommand: the global flags work before the
// command name, after it, and in a subcommand of a command.
func TestGlobalFlagsBeforeOrAfterCommand(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"default", []string{"status"}, "redis://127.0.0.1:6379/0"},
		{"before the command", []string{"--redis-url", "redis://a:1/0", "status"}, "redis://a:1/0"},
		{"after the command", []string{"status", "--redis-url", "redis://b:2/0"}, "redis://b:2/0"},
		{"after wins over before", []string{"--redis-url", "redis://a:1/0", "status", "--redis-url", "redis://b:2/0"}, "redis://b:2/0"},
		{"before a subcommand's parent", []string{"--redis-url", "redis://c:3/0", "dlq", "list"}, "redis://c:3/0"},
		{"after a subcommand", []string{"dlq", "list", "--redis-url", "redis://d:4/0"}, "redis://d:4/0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			app := newApp()
			var got string
			capture := func(c *cli.Context) error { got = c.String("redis-url"); return nil }
			for _, c := range app.Commands {
				c.Action = capture
				for _, s := range c.Subcommands {
					s.Action = capture
				}
			}
			if err := app.Run(append([]string{"kbridge"}, tt.args...)); err != nil {
				t.Fatalf("run %v: %v", tt.args, err)
			}
			if got != tt.want {
				t.Errorf("redis-url = %q, want %q", got, tt.want)
			}
		})
	}
}
