package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
	"gopkg.in/yaml.v3"
)

// composeFile is the part of docker-compose.yml the test reads.
type composeFile struct {
	Services map[string]struct {
		Image       string            `yaml:"image"`
		Entrypoint  []string          `yaml:"entrypoint"`
		Command     []string          `yaml:"command"`
		Environment map[string]string `yaml:"environment"`
		Healthcheck *struct {
			Test []string `yaml:"test"`
		} `yaml:"healthcheck"`
		Profiles []string `yaml:"profiles"`
		Init     bool     `yaml:"init"`
	} `yaml:"services"`
}

// TestComposeFlagsExist parses docker-compose.yml (Docker cannot run here)
// and checks that every kbridge flag and KBRIDGE_ variable it passes exists
// on the subcommand it is given to, and that the long-running services have
// health checks.
func TestComposeFlagsExist(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var cf composeFile
	if err := yaml.Unmarshal(raw, &cf); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	app := newApp()
	seen := map[string]bool{}
	for name, svc := range cf.Services {
		if !strings.HasPrefix(svc.Image, "kbridge") {
			continue
		}
		// The image's entrypoint is kbridge; a service may override it.
		args := svc.Command
		if len(svc.Entrypoint) > 0 {
			if svc.Entrypoint[0] != "kbridge" {
				t.Errorf("service %s: entrypoint %v is not kbridge", name, svc.Entrypoint)
				continue
			}
			args = append(slices.Clone(svc.Entrypoint[1:]), args...)
		}
		flags := flagSet(app.Flags)
		envs := envSet(app.Flags)
		var cmd *cli.Command
		for _, a := range args {
			if !strings.HasPrefix(a, "-") {
				if cmd == nil {
					cmd = app.Command(a)
					if cmd == nil {
						t.Errorf("service %s: no kbridge command %q", name, a)
						break
					}
					seen[cmd.Name] = true
					for k := range flagSet(cmd.Flags) {
						flags[k] = true
					}
					for k := range envSet(cmd.Flags) {
						envs[k] = true
					}
				}
				continue // a flag's value, or the command
			}
			f, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
			if !flags[f] {
				t.Errorf("service %s: kbridge %v: flag --%s does not exist there", name, cmdName(cmd), f)
			}
		}
		if cmd == nil {
			t.Errorf("service %s runs no kbridge command: %v", name, args)
			continue
		}
		for k := range svc.Environment {
			if strings.HasPrefix(k, "KBRIDGE_") && !envs[k] {
				t.Errorf("service %s: kbridge %s reads no environment variable %s", name, cmd.Name, k)
			}
		}
		if (cmd.Name == "ingest" || cmd.Name == "worker") && (svc.Healthcheck == nil || len(svc.Healthcheck.Test) == 0) {
			t.Errorf("service %s has no health check", name)
		}
		if (cmd.Name == "ingest" || cmd.Name == "worker") && !svc.Init {
			t.Errorf("service %s: want init: true (PID 1 must reap the orphans of --exec commands)", name)
		}
		if cmd.Name == "worker" && (slices.Contains(args, "--consumer") || svc.Environment["KBRIDGE_WORKER_CONSUMER"] != "") {
			t.Errorf("service %s sets a fixed consumer name: replicas (docker compose --scale) would share it", name)
		}
	}
	for _, want := range []string{"ingest", "worker"} {
		if !seen[want] {
			t.Errorf("docker-compose.yml runs no kbridge %s", want)
		}
	}
	workers := 0
	for _, svc := range cf.Services {
		if len(svc.Command) > 0 && svc.Command[0] == "worker" && len(svc.Profiles) == 0 {
			workers++
		}
	}
	for _, name := range []string{"kafka", "redis"} {
		if svc, ok := cf.Services[name]; !ok || svc.Healthcheck == nil {
			t.Errorf("service %s missing or without health check", name)
		}
	}
	if workers != 2 {
		t.Errorf("docker-compose.yml starts %d workers by default, want 2", workers)
	}
}

func cmdName(c *cli.Command) string {
	if c == nil {
		return "(global)"
	}
	return c.Name
}

func flagSet(fs []cli.Flag) map[string]bool {
	m := map[string]bool{"help": true, "h": true}
	for _, f := range fs {
		for _, n := range f.Names() {
			m[n] = true
		}
	}
	return m
}

func envSet(fs []cli.Flag) map[string]bool {
	m := map[string]bool{}
	for _, f := range fs {
		if e, ok := f.(interface{ GetEnvVars() []string }); ok {
			for _, v := range e.GetEnvVars() {
				m[v] = true
			}
		}
	}
	return m
}
