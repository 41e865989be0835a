package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strconv"
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
			Usage: "Redis to use: redis://[user@]host:port/db, rediss:// for TLS; the password in --redis-password-file (or user:password@ in the URL, " +
				"best from the environment: a command line shows in ps); with --redis-cluster, add more nodes as ?addr=host:port"},
		&cli.BoolFlag{Name: "redis-cluster", EnvVars: []string{"KBRIDGE_REDIS_CLUSTER"}, Usage: "--redis-url names a Redis Cluster"},
		&cli.StringFlag{Name: "redis-password-file", EnvVars: []string{"KBRIDGE_REDIS_PASSWORD_FILE"}, Usage: "read the Redis password from `FILE` " +
			"(one line; the user name goes in the URL: rediss://kbridge@host:6380/0); keeps it out of the URL, ps and the environment"},
		&cli.StringFlag{Name: "redis-tls-ca", EnvVars: []string{"KBRIDGE_REDIS_TLS_CA"}, Usage: "PEM `FILE` of the CA that signed the Redis server's certificate (rediss:// only; default: system roots)"},
		&cli.StringFlag{Name: "redis-tls-cert", EnvVars: []string{"KBRIDGE_REDIS_TLS_CERT"}, Usage: "PEM `FILE` of a client certificate, for a Redis with tls-auth-clients (rediss:// only; with --redis-tls-key)"},
		&cli.StringFlag{Name: "redis-tls-key", EnvVars: []string{"KBRIDGE_REDIS_TLS_KEY"}, Usage: "PEM `FILE` of the client certificate's private key"},
		&cli.DurationFlag{Name: "redis-cluster-reload-interval", Value: DefaultClusterReloadInterval, EnvVars: []string{"KBRIDGE_REDIS_CLUSTER_RELOAD_INTERVAL"},
			Usage: "with --redis-cluster: how often the slot map is read again (CLUSTER SLOTS), which bounds how long the slots of a failed master stay unreachable after its replica took over; each read costs the server CPU (see docs/operations.md)"},
		&cli.StringFlag{Name: "prefix", Value: wire.DefaultPrefix, EnvVars: []string{"KBRIDGE_PREFIX"}, Usage: "prefix of every Redis key"},
		&cli.StringFlag{Name: "log-format", Value: "text", EnvVars: []string{"KBRIDGE_LOG_FORMAT"}, Usage: "log format: text or json"},
		&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: []string{"KBRIDGE_LOG_LEVEL"}, Usage: "log level: debug, info, warn or error"},
	}
}

// newRedis connects to --redis-url with the --redis-password-file,
// --redis-tls-* and --redis-cluster* flags. It reads those files but does no
// network I/O; callers retry. Every problem of those flags is reported at
// once, with exit status 2; a command with flags of its own adds
// redisProblems to its own problems first, so that one run lists them all.
func newRedis(c *cli.Context) (redis.UniversalClient, error) {
	s := parseRedisFlags(c)
	if len(s.probs) > 0 {
		return nil, cli.Exit("invalid Redis configuration:\n  - "+strings.Join(s.probs, "\n  - "), 2)
	}
	return s.client(), nil
}

// newRedisDeferred is newRedis for a command that reports the problems of
// the Redis flags together with its own (redisProblemErrors): it returns a
// client even when they have problems. That client then fails every
// command with "invalid Redis configuration" and never dials anything, so
// a caller that forgot to check cannot reach a Redis it was not told about.
func newRedisDeferred(c *cli.Context) (redis.UniversalClient, error) {
	s := parseRedisFlags(c)
	if len(s.probs) == 0 {
		return s.client(), nil
	}
	refuse := errors.New("invalid Redis configuration: " + strings.Join(s.probs, "; "))
	return redis.NewClient(&redis.Options{Addr: "invalid:0", MaxRetries: -1,
		Dialer: func(context.Context, string, string) (net.Conn, error) { return nil, refuse }}), nil
}

// redisProblems returns every problem of the Redis flags (--redis-url,
// --redis-password-file, --redis-tls-*, --redis-cluster*), reading the files
// they name but without network I/O. Commands add them to the problems of
// their own flags, so that exit status 2 comes with every reason at once.
func redisProblems(c *cli.Context) []string { return parseRedisFlags(c).probs }

// redisProblemErrors is redisProblems as errors (for errors.Join).
func redisProblemErrors(c *cli.Context) []error {
	var errs []error
	for _, p := range redisProblems(c) {
		errs = append(errs, errors.New(p))
	}
	return errs
}

// redisFlagsNotTaken returns an error for each Redis flag other than
// --redis-url that is set (on the command line or in the environment), for a
// command that cannot honour them: ignoring a password file or a CA would
// connect differently from what the user asked.
func redisFlagsNotTaken(c *cli.Context, why string) []error {
	var errs []error
	for _, p := range redisFlagsNotTakenText(c, why) {
		errs = append(errs, errors.New(p))
	}
	return errs
}

// redisFlagsNotTakenText is redisFlagsNotTaken as strings.
func redisFlagsNotTakenText(c *cli.Context, why string) []string {
	var probs []string
	for _, f := range []string{"redis-password-file", "redis-tls-ca", "redis-tls-cert", "redis-tls-key", "redis-cluster-reload-interval"} {
		if c.IsSet(f) {
			probs = append(probs, fmt.Sprintf("--%s is not taken here: %s", f, why))
		}
	}
	return probs
}

// redisSetup is what the Redis flags amount to: the options of a client
// (opt) or of a cluster client (cluster), and every problem found.
type redisSetup struct {
	opt     *redis.Options
	cluster *redis.ClusterOptions
	probs   []string
}

// client returns the go-redis client of s, which must have no problems.
// Context deadlines bound every call (shutdown and rebalances must not wait
// on a hung Redis); go-redis ignores them unless told.
func (s redisSetup) client() redis.UniversalClient {
	if s.cluster != nil {
		s.cluster.ContextTimeoutEnabled = true
		return redis.NewClusterClient(s.cluster)
	}
	s.opt.ContextTimeoutEnabled = true
	return redis.NewClient(s.opt)
}

// DefaultClusterReloadInterval is the default of
// --redis-cluster-reload-interval: how old go-redis lets its copy of a
// Redis Cluster's slot map get before it reads CLUSTER SLOTS again (in the
// background, when a command runs). go-redis reloads the map at once on
// MOVED, but not when a master dies: it keeps sending that master's slots
// to the dead address until the map is this old. Its own default, 60s, held
// the streams of a failed-over master for up to a minute (internal/e2e
// TestClusterFailover).
const DefaultClusterReloadInterval = time.Second

// parseRedisFlags reads the Redis flags: the URL (single node or, with
// --redis-cluster, the seed of a cluster), ?skip_verify, the password file,
// the TLS files and the cluster's reload interval.
func parseRedisFlags(c *cli.Context) redisSetup {
	var (
		s          redisSetup
		raw        = c.String("redis-url")
		urlName    = flagSource(c, "redis-url", "KBRIDGE_REDIS_URL")
		tlsCfg     **tls.Config
		password   *string
		skipVerify bool
	)
	// ?skip_verify=true is go-redis's for a single node, and refused by its
	// cluster URL parser: kbridge takes it off the URL and applies it
	// itself, the same way for both.
	raw, skipVerify, err := takeSkipVerify(raw)
	if err == nil {
		if c.Bool("redis-cluster") {
			if s.cluster, err = redis.ParseClusterURL(raw); err == nil {
				tlsCfg, password = &s.cluster.TLSConfig, &s.cluster.Password
			}
		} else if s.opt, err = redis.ParseURL(raw); err == nil {
			tlsCfg, password = &s.opt.TLSConfig, &s.opt.Password
		}
	}
	if err != nil {
		s.probs = append(s.probs, urlProblem(urlName, c.String("redis-url"), err))
		s.probs = append(s.probs, redisFileProblems(c)...)
		return s
	}
	if skipVerify && *tlsCfg == nil {
		s.probs = append(s.probs, "?skip_verify in "+urlName+" needs a rediss:// URL (TLS)")
	}
	if skipVerify && c.String("redis-tls-ca") != "" {
		s.probs = append(s.probs, "?skip_verify=true in "+urlName+" and --redis-tls-ca contradict each other: with skip_verify no certificate is checked; drop one")
	}
	if skipVerify && *tlsCfg != nil {
		(*tlsCfg).InsecureSkipVerify = true //nolint:gosec // opt-in, documented as for tests only
	}
	s.probs = append(s.probs, redisSecurity(c, urlName, tlsCfg, password)...)
	interval := c.Duration("redis-cluster-reload-interval")
	switch {
	case c.IsSet("redis-cluster-reload-interval") && !c.Bool("redis-cluster"):
		s.probs = append(s.probs, "--redis-cluster-reload-interval needs --redis-cluster")
	case interval <= 0:
		s.probs = append(s.probs, fmt.Sprintf("--redis-cluster-reload-interval %v must be above 0", interval))
	}
	if s.cluster != nil {
		s.cluster.ClusterStateReloadInterval = interval
		if s.cluster.TLSConfig != nil {
			s.cluster.NewClient = perNodeServerName(s.cluster.TLSConfig)
		}
	}
	return s
}

// perNodeServerName returns a ClusterOptions.NewClient that checks each
// node's certificate against that node's own host, as CLUSTER SLOTS names
// it. go-redis would check every node against the seed's host (it puts the
// seed's name in the one TLS config it shares between the nodes), which
// fails on a cluster whose nodes have certificates of their own.
func perNodeServerName(base *tls.Config) func(*redis.Options) *redis.Client {
	return func(o *redis.Options) *redis.Client {
		if host, _, err := net.SplitHostPort(o.Addr); err == nil && o.TLSConfig != nil {
			t := base.Clone()
			t.ServerName = host
			o.TLSConfig = t
		}
		return redis.NewClient(o)
	}
}

// takeSkipVerify removes ?skip_verify=BOOL from a Redis URL and returns it.
// A URL that does not parse is returned as it is (the caller reports it).
func takeSkipVerify(raw string) (string, bool, error) {
	u, err := url.Parse(raw)
	if err != nil || !strings.Contains(u.RawQuery, "skip_verify") {
		return raw, false, nil
	}
	q := u.Query()
	if !q.Has("skip_verify") {
		return raw, false, nil
	}
	v, err := strconv.ParseBool(q.Get("skip_verify"))
	if err != nil {
		return raw, false, fmt.Errorf("skip_verify=%q: want true or false", q.Get("skip_verify"))
	}
	q.Del("skip_verify")
	u.RawQuery = q.Encode()
	return u.String(), v, nil
}

// redisSecurity applies --redis-password-file and --redis-tls-* to the
// options parsed from the URL (tlsCfg is non-nil for rediss://) and returns
// every problem found. urlName names where the URL came from.
func redisSecurity(c *cli.Context, urlName string, tlsCfg **tls.Config, password *string) []string {
	var probs []string
	if f := c.String("redis-password-file"); f != "" {
		switch pw, err := readSecretFile(f); {
		case err != nil:
			probs = append(probs, flagSource(c, "redis-password-file", "KBRIDGE_REDIS_PASSWORD_FILE")+": "+err.Error())
		case *password != "":
			probs = append(probs, flagSource(c, "redis-password-file", "KBRIDGE_REDIS_PASSWORD_FILE")+" and a password in "+urlName+": give one of them")
		default:
			*password = pw
		}
	}
	ca, cert, key := c.String("redis-tls-ca"), c.String("redis-tls-cert"), c.String("redis-tls-key")
	if *tlsCfg == nil {
		for name, v := range map[string]string{"--redis-tls-ca": ca, "--redis-tls-cert": cert, "--redis-tls-key": key} {
			if v != "" {
				probs = append(probs, name+" needs a rediss:// URL (TLS); "+urlName+" is "+redactURL(c.String("redis-url")))
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

// redisFileProblems checks the files of the Redis flags when the URL itself
// could not be parsed, so that they are reported in the same run.
func redisFileProblems(c *cli.Context) []string {
	var probs []string
	if f := c.String("redis-password-file"); f != "" {
		if _, err := readSecretFile(f); err != nil {
			probs = append(probs, flagSource(c, "redis-password-file", "KBRIDGE_REDIS_PASSWORD_FILE")+": "+err.Error())
		}
	}
	if ca := c.String("redis-tls-ca"); ca != "" {
		if _, err := loadCA(ca); err != nil {
			probs = append(probs, "--redis-tls-ca: "+err.Error())
		}
	}
	return probs
}

// flagSource names where the value of a flag came from, for messages: the
// environment variable when its value is the variable's, else the flag.
func flagSource(c *cli.Context, name, env string) string {
	if v, ok := os.LookupEnv(env); ok && v != "" && fmt.Sprint(c.Value(name)) == v {
		return env + " (environment)"
	}
	return "--" + name
}

// readSecretFile returns the first line of a secret file (a password),
// without its line ending and without a UTF-8 byte order mark (which some
// editors put first). A first line that is empty or only white space is an
// error. The error never contains the file's content.
func readSecretFile(name string) (string, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return "", err
	}
	s, _, _ := strings.Cut(string(b), "\n")
	s = strings.TrimPrefix(strings.TrimSuffix(s, "\r"), "\ufeff")
	switch {
	case s == "":
		return "", fmt.Errorf("%s: the first line is empty", name)
	case strings.TrimSpace(s) == "":
		return "", fmt.Errorf("%s: the first line is only white space", name)
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

// urlProblem says why a URL given as what (a flag, or an environment
// variable) cannot be used, without repeating it: url.Parse's error quotes
// the whole URL, password included, and even its inner error quotes pieces
// of it (a bad escape, a "port" that is really the rest of a password after
// a '#'). Other errors (go-redis's: scheme, options) come with the URL
// redacted.
func urlProblem(what, raw string, err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		hint := ""
		if strings.Contains(what, "redis") {
			hint = ", or give the password in --redis-password-file"
		}
		return what + " is not a valid URL (not repeated here: it may hold a password). In a user name or password, " +
			"percent-encode % # ? / @ : and spaces (%25 %23 %3F %2F %40 %3A %20)" + hint
	}
	return fmt.Sprintf("%s %s: %v", what, redactURL(raw), err)
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
		return slog.New(slog.NewTextHandler(stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(stderr, opts)), nil
	}
	return nil, cli.Exit(fmt.Sprintf("--log-format %q: want text or json", c.String("log-format")), 2)
}

// stderr receives the logs; tests replace it.
var stderr io.Writer = os.Stderr

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
