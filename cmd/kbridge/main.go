// Command kbridge bridges Kafka to Redis Streams: "kbridge ingest" reads
// Kafka into per-partition streams, "kbridge worker" processes them, and
// "kbridge status" shows where everything stands. Run "kbridge --help".
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/redis/go-redis/v9"

	"github.com/urfave/cli/v2"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args))
}

func run(args []string) int {
	// go-redis logs dial failures on its own, unstructured, on stderr; every
	// command here reports Redis errors itself, in its slog format.
	redis.SetLogger(quietRedis{})
	app := newApp()
	if err := app.Run(args); err != nil {
		if ec, ok := err.(cli.ExitCoder); ok {
			if msg := err.Error(); msg != "" {
				fmt.Fprintln(os.Stderr, "kbridge:", msg)
			}
			return ec.ExitCode()
		}
		fmt.Fprintln(os.Stderr, "kbridge:", err)
		return 1
	}
	return 0
}

func newApp() *cli.App {
	app := &cli.App{
		Name:    "kbridge",
		Usage:   "a backpressure-aware, rebalance-safe bridge from Kafka to Redis Streams",
		Version: version,
		Description: `One ingest process reads Kafka and appends every record to a Redis stream per
partition; any number of workers (kbridge worker, or your own in any language)
consume the streams with XREADGROUP and XACK. The ingest stops fetching while
the streams are full and commits a Kafka offset only once every record below it
was acknowledged. At-least-once, nothing lost.

Every flag can also be set with the environment variable shown beside it.`,
		Flags:                commonFlags(),
		Commands:             commands(),
		EnableBashCompletion: true,
		OnUsageError:         usageError,
		ExitErrHandler:       func(*cli.Context, error) {}, // run() reports and exits
	}
	for _, c := range app.Commands {
		setUsageError(c)
		addGlobalFlags(c)
	}
	return app
}

// addGlobalFlags lets the global flags also follow the command name
// ("kbridge status --redis-url ..."), on every command that does not define
// a flag of the same name itself (demo has its own --redis-url). urfave/cli
// looks a flag up in the nearest command that defines it, so mergeGlobals
// copies a value given before the command name down to the command.
func addGlobalFlags(c *cli.Command) {
	have := map[string]bool{}
	for _, f := range c.Flags {
		for _, n := range f.Names() {
			have[n] = true
		}
	}
	var added []string
	for _, f := range commonFlags() {
		if name := f.Names()[0]; !have[name] {
			c.Flags = append(c.Flags, f)
			added = append(added, name)
		}
	}
	before := c.Before
	c.Before = func(ctx *cli.Context) error {
		if err := mergeGlobals(ctx, added); err != nil {
			return err
		}
		if before != nil {
			return before(ctx)
		}
		return nil
	}
	for _, s := range c.Subcommands {
		addGlobalFlags(s)
	}
}

// mergeGlobals gives each of names not set on this command the value set on
// the nearest command above it.
func mergeGlobals(c *cli.Context, names []string) error {
	for _, name := range names {
		if c.IsSet(name) {
			continue
		}
		for _, up := range c.Lineage()[1:] {
			if up.IsSet(name) {
				if err := c.Set(name, fmt.Sprint(up.Value(name))); err != nil {
					return cli.Exit(fmt.Sprintf("--%s: %v", name, err), 2)
				}
				break
			}
		}
	}
	return nil
}

// usageError turns a flag parsing error into exit code 2 with the reason.
func usageError(c *cli.Context, err error, _ bool) error {
	return cli.Exit(fmt.Sprintf("%v (see --help)", err), 2)
}

func setUsageError(c *cli.Command) {
	if c.OnUsageError == nil {
		c.OnUsageError = usageError
	}
	for _, s := range c.Subcommands {
		setUsageError(s)
	}
}

// quietRedis discards go-redis's internal logging.
type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}
