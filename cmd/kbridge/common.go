package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

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
		&cli.StringFlag{Name: "redis-password-file", EnvVars: []string{"KBRIDGE_REDIS_PASSWORD_FILE"}, Usage: "read the Redis password from `FILE` " +
			"(one line; the user name goes in the URL: rediss://kbridge@host:6380/0); keeps it out of the URL, ps and the environment"},
		&cli.StringFlag{Name: "redis-tls-ca", EnvVars: []string{"KBRIDGE_REDIS_TLS_CA"}, Usage: "PEM `FILE` of the CA that signed the Redis server's certificate (rediss:// only; default: system roots)"},
		&cli.StringFlag{Name: "redis-tls-cert", EnvVars: []string{"KBRIDGE_REDIS_TLS_CERT"}, Usage: "PEM `FILE` of a client certificate, for a Redis with tls-auth-clients (rediss:// only; with --redis-tls-key)"},
		&cli.StringFlag{Name: "redis-tls-key", EnvVars: []string{"KBRIDGE_REDIS_TLS_KEY"}, Usage: "PEM `FILE` of the client certificate's private key"},
		&cli.StringFlag{Name: "prefix", Value: wire.DefaultPrefix, EnvVars: []string{"KBRIDGE_PREFIX"}, Usage: "prefix of every Redis key"},
		&cli.StringFlag{Name: "log-format", Value: "text", EnvVars: []string{"KBRIDGE_LOG_FORMAT"}, Usage: "log format: text or json"},
		&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: []string{"KBRIDGE_LOG_LEVEL"}, Usage: "log level: debug, info, warn or error"},
	}
}

// newRedis connects to --redis-url with the --redis-password-file and
// --redis-tls-* flags. It reads those files but does no network I/O; callers
// retry. Every problem is reported at once, with exit status 2.
func newRedis(c *cli.Context) (redis.UniversalClient, error) {
	raw := c.String("redis-url")
	var (
		tlsCfg     **tls.Config
		password   *string
		clusterOpt *redis.ClusterOptions
		opt        *redis.Options
		err        error
	)
	if c.Bool("redis-cluster") {
		if clusterOpt, err = redis.ParseClusterURL(raw); err == nil {
			tlsCfg, password = &clusterOpt.TLSConfig, &clusterOpt.Password
		}
	} else if opt, err = redis.ParseURL(raw); err == nil {
		tlsCfg, password = &opt.TLSConfig, &opt.Password
	}
	if err != nil {
		return nil, cli.Exit(fmt.Sprintf("--redis-url %s: %v", redactURL(raw), err), 2)
	}
	if probs := redisSecurity(c, tlsCfg, password); len(probs) > 0 {
		return nil, cli.Exit("invalid Redis configuration:\n  - "+strings.Join(probs, "\n  - "), 2)
	}
	// Context deadlines bound every call (shutdown and rebalances must not
	// wait on a hung Redis); go-redis ignores them unless told.
	if clusterOpt != nil {
		clusterOpt.ContextTimeoutEnabled = true
		clusterOpt.ClusterStateReloadInterval = ClusterStateReloadInterval
		return redis.NewClusterClient(clusterOpt), nil
	}
	opt.ContextTimeoutEnabled = true
	return redis.NewClient(opt), nil
}

// ClusterStateReloadInterval is how old go-redis lets its copy of a Redis
// Cluster's slot map get before it reads CLUSTER SLOTS again (in the
// background, when a command runs). go-redis reloads the map at once on
// MOVED, but not when a master dies: it keeps sending that master's slots to
// the dead address until the map is this old. Its default, 60s, held the
// streams of a failed-over master for up to a minute
// (internal/e2e TestClusterFailover); one read of CLUSTER SLOTS a second is
// cheap.
const ClusterStateReloadInterval = time.Second

// redisSecurity applies --redis-password-file and --redis-tls-* to the
// options parsed from the URL (tlsCfg is non-nil for rediss://) and returns
// every problem found.
func redisSecurity(c *cli.Context, tlsCfg **tls.Config, password *string) []string {
	var probs []string
	if f := c.String("redis-password-file"); f != "" {
		switch pw, err := readSecretFile(f); {
		case err != nil:
			probs = append(probs, "--redis-password-file: "+err.Error())
		case *password != "":
			probs = append(probs, "--redis-password-file and a password in --redis-url: give one of them")
		default:
			*password = pw
		}
	}
	ca, cert, key := c.String("redis-tls-ca"), c.String("redis-tls-cert"), c.String("redis-tls-key")
	if *tlsCfg == nil {
		for name, v := range map[string]string{"--redis-tls-ca": ca, "--redis-tls-cert": cert, "--redis-tls-key": key} {
			if v != "" {
				probs = append(probs, name+" needs a rediss:// URL (TLS); --redis-url is "+redactURL(c.String("redis-url")))
			}
		}
		slices.Sort(probs)
		return probs
	}
	if ca != "" {
		pool, err := loadCA(ca)
		if err != nil {
			probs = append(probs, "--redis-tls-ca: "+err.Error())
		}
		(*tlsCfg).RootCAs = pool
	}
	switch {
	case cert != "" && key != "":
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			probs = append(probs, fmt.Sprintf("--redis-tls-cert/--redis-tls-key: %v", err))
		}
		(*tlsCfg).Certificates = []tls.Certificate{pair}
	case cert != "" || key != "":
		probs = append(probs, "--redis-tls-cert and --redis-tls-key go together: give both or neither")
	}
	return probs
}

// readSecretFile returns the first line of a secret file (a password), without
// its line ending. The error never contains the file's content.
func readSecretFile(name string) (string, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return "", err
	}
	s, _, _ := strings.Cut(string(b), "\n")
	s = strings.TrimSuffix(s, "\r")
	if s == "" {
		return "", fmt.Errorf("%s: the first line is empty", name)
	}
	return s, nil
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
	cfg := &tls.Config{InsecureSkipVerify: insecure, MinVersion: tls.VersionTLS12} //nolint:gosec // opt-in by flag
	if caFile != "" {
		pool, err := loadCA(caFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

// loadCA reads a PEM file of CA certificates.
func loadCA(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate in it", file)
	}
	return pool, nil
}
