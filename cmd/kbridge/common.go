package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/redis/go-redis/v9"
	"github.com/urfave/cli/v2"

	"github.com/kbridge/kbridge/internal/wire"
)

// commonFlags are accepted before the command name, and after it by every
// command that has no flag of the same name (see addGlobalFlags).
func commonFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "redis-url", Value: "redis://127.0.0.1:6379/0", EnvVars: []string{"KBRIDGE_REDIS_URL"},
			Usage: "Redis to use: redis://[user:password@]host:port/db, rediss:// for TLS; with --redis-cluster, add more nodes as ?addr=host:port"},
		&cli.BoolFlag{Name: "redis-cluster", EnvVars: []string{"KBRIDGE_REDIS_CLUSTER"}, Usage: "--redis-url names a Redis Cluster"},
		&cli.StringFlag{Name: "prefix", Value: wire.DefaultPrefix, EnvVars: []string{"KBRIDGE_PREFIX"}, Usage: "prefix of every Redis key"},
		&cli.StringFlag{Name: "log-format", Value: "text", EnvVars: []string{"KBRIDGE_LOG_FORMAT"}, Usage: "log format: text or json"},
		&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: []string{"KBRIDGE_LOG_LEVEL"}, Usage: "log level: debug, info, warn or error"},
	}
}

// newRedis connects to --redis-url. It does no I/O; callers retry.
func newRedis(c *cli.Context) (redis.UniversalClient, error) {
	raw := c.String("redis-url")
	if c.Bool("redis-cluster") {
		opt, err := redis.ParseClusterURL(raw)
		if err != nil {
			return nil, cli.Exit(fmt.Sprintf("--redis-url %s: %v", redactURL(raw), err), 2)
		}
		opt.ContextTimeoutEnabled = true
		return redis.NewClusterClient(opt), nil
	}
	opt, err := redis.ParseURL(raw)
	if err != nil {
		return nil, cli.Exit(fmt.Sprintf("--redis-url %s: %v", redactURL(raw), err), 2)
	}
	// Context deadlines bound every call (shutdown and rebalances must not
	// wait on a hung Redis); go-redis ignores them unless told.
	opt.ContextTimeoutEnabled = true
	return redis.NewClient(opt), nil
}

// redactURL hides the password of a URL, for logs and errors.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// newLogger builds the slog logger of --log-format and --log-level.
func newLogger(c *cli.Context) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return nil, cli.Exit(fmt.Sprintf("--log-level %q: want debug, info, warn or error", c.String("log-level")), 2)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch strings.ToLower(c.String("log-format")) {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, cli.Exit(fmt.Sprintf("--log-format %q: want text or json", c.String("log-format")), 2)
}

// exit is os.Exit; tests replace it.
var exit = osExit

var osExit = os.Exit

// signalContext is cancelled by the first SIGINT or SIGTERM (graceful
// shutdown); a second one calls onForceExit (if not nil: e.g. kill the
// child processes, which would otherwise outlive the exit) and exits at once
// with status 130.
func signalContext(log *slog.Logger, onForceExit func()) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		select {
		case s := <-ch:
			log.Info("signal received: shutting down gracefully (send it again to exit at once)", "signal", s.String())
			cancel()
		case <-ctx.Done():
			return
		}
		s := <-ch
		log.Warn("second signal: exiting now", "signal", s.String())
		if onForceExit != nil {
			onForceExit()
		}
		exit(130)
	}()
	return ctx, func() { signal.Stop(ch); cancel() }
}

// tlsConfig returns a TLS config for --*-tls flags, or nil.
func tlsConfig(enabled, insecure bool, caFile string) (*tls.Config, error) {
	if !enabled {
		return nil, nil
	}
	cfg := &tls.Config{InsecureSkipVerify: insecure} //nolint:gosec // opt-in by flag
	if caFile != "" {
		pool, err := loadCA(caFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}
