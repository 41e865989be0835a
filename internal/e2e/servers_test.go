package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"

	"github.com/kbridge/kbridge/internal/testenv"
)

func TestMain(m *testing.M) {
	// go-redis logs dial failures on its own (a killed cluster node): the
	// tests say what matters.
	redis.SetLogger(quietRedis{})
	code := m.Run()
	shared.stop()
	os.Exit(code)
}

// secret returns a random password that no log line could contain by chance.
func secret(what string) string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return what + "-" + hex.EncodeToString(b[:])
}

// script runs one of the repository's scripts with env added to the test's
// environment and returns its combined output.
func script(name string, env []string, args ...string) (string, error) {
	cmd := exec.Command("bash", append([]string{filepath.Join(testenv.ScriptsDir(), name)}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// certs writes a fresh test CA with a server and a client certificate into a
// new directory (scripts/certs.sh) and returns it.
func certs(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tls")
	if out, err := script("certs.sh", nil, dir); err != nil {
		t.Fatalf("certs.sh: %v\n%s", err, out)
	}
	return dir
}

// writeSecret writes a password file (mode 0600) and returns its path.
func writeSecret(t *testing.T, pw string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(f, []byte(pw+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// freePorts returns n distinct loopback ports that were free a moment ago.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ps []int
	for len(ps) < n {
		if p := testenv.FreePort(t); !slices.Contains(ps, p) {
			ps = append(ps, p)
		}
	}
	return ps
}

// ---------------------------------------------------------------- Kafka

// kafkaServer is a broker of this package (scripts/kafka.sh) with a
// PLAINTEXT listener for the tests' admin (principal ANONYMOUS, a super
// user), a SASL_SSL listener (SCRAM-SHA-256 and -512) and a SASL_PLAINTEXT
// listener (PLAIN), and StandardAuthorizer: the user kbridge may do only
// what the tests grant it.
type kafkaServer struct {
	dir                                 string
	plain, controller, saslSSL, saslTxt int
	tlsDir                              string
	users                               map[string]string // name → password
}

// sharedServers are started once for the package (a Kafka broker takes
// seconds to start) and stopped by TestMain.
type sharedServers struct {
	mu       sync.Mutex
	kafka    *kafkaServer
	kafkaErr error
}

var shared sharedServers

// secureKafka returns the package's secured broker, starting it on first use.
func secureKafka(t *testing.T) *kafkaServer {
	t.Helper()
	if !testenv.RealKafka() {
		t.Skip("needs a real Kafka (the jars scripts/kafka.sh caches): set KAFKA_BROKERS and REDIS_ADDR, or run scripts/test.sh")
	}
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.kafka == nil && shared.kafkaErr == nil {
		shared.kafka, shared.kafkaErr = startSecureKafka(t)
	}
	if shared.kafkaErr != nil {
		t.Fatalf("secured Kafka broker: %v", shared.kafkaErr)
	}
	return shared.kafka
}

func startSecureKafka(t *testing.T) (*kafkaServer, error) {
	dir, err := os.MkdirTemp("", "kbridge-e2e-kafka-")
	if err != nil {
		return nil, err
	}
	ps := freePorts(t, 4)
	k := &kafkaServer{dir: dir, plain: ps[0], controller: ps[1], saslSSL: ps[2], saslTxt: ps[3],
		tlsDir: filepath.Join(dir, "tls"),
		users:  map[string]string{"kbridge": secret("kafka-pw"), "admin": secret("kafka-admin-pw")}}
	began := time.Now()
	out, err := script("kafka.sh", append(k.env(), "KAFKA_FRESH=1"), "start")
	if err != nil {
		return nil, fmt.Errorf("kafka.sh start: %v\n%s", err, out)
	}
	t.Logf("secured Kafka broker: PLAINTEXT %d (admin), SASL_SSL %d (SCRAM-SHA-256/512), SASL_PLAINTEXT %d (PLAIN), ACLs on; started in %v",
		k.plain, k.saslSSL, k.saslTxt, time.Since(began).Round(time.Millisecond))
	return k, nil
}

func (k *kafkaServer) env() []string {
	var users []string
	for u, pw := range k.users {
		users = append(users, u+":"+pw)
	}
	slices.Sort(users)
	return []string{
		"KAFKA_PORT=" + strconv.Itoa(k.plain), "KAFKA_CONTROLLER_PORT=" + strconv.Itoa(k.controller),
		"KAFKA_SASL_SSL_PORT=" + strconv.Itoa(k.saslSSL), "KAFKA_SASL_PLAINTEXT_PORT=" + strconv.Itoa(k.saslTxt),
		"KAFKA_SASL_USERS=" + strings.Join(users, ","), "KAFKA_ACL=1", "KAFKA_SUPER_USERS=admin",
		"KAFKA_DATA_DIR=" + k.dir, "KAFKA_TLS_DIR=" + k.tlsDir,
	}
}

func (s *sharedServers) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if k := s.kafka; k != nil {
		if out, err := script("kafka.sh", k.env(), "stop"); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: kafka.sh stop: %v\n%s", err, out)
		}
		os.RemoveAll(k.dir)
		s.kafka = nil
	}
}

func addr(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }

// adminBrokers is the PLAINTEXT listener, where the tests act as a super user.
func (k *kafkaServer) adminBrokers() []string { return []string{addr(k.plain)} }

func (k *kafkaServer) admin() *kafka.Client {
	return &kafka.Client{Addr: kafka.TCP(k.adminBrokers()...), Timeout: 10 * time.Second}
}

// allow grants the user ops on a topic or group (literal name) and waits
// until the broker's authorizer has them.
func (k *kafkaServer) allow(t *testing.T, user string, rt kafka.ResourceType, name string, ops ...kafka.ACLOperationType) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var acls []kafka.ACLEntry
	for _, op := range ops {
		acls = append(acls, kafka.ACLEntry{ResourceType: rt, ResourceName: name, ResourcePatternType: kafka.PatternTypeLiteral,
			Principal: "User:" + user, Host: "*", Operation: op, PermissionType: kafka.ACLPermissionTypeAllow})
	}
	res, err := k.admin().CreateACLs(ctx, &kafka.CreateACLsRequest{ACLs: acls})
	if err != nil {
		t.Fatalf("create ACLs %v: %v", acls, err)
	}
	for _, e := range res.Errors {
		if e != nil {
			t.Fatalf("create ACLs %v: %v", acls, e)
		}
	}
	testenv.Eventually(t, 20*time.Second, func() bool {
		r, err := k.admin().DescribeACLs(ctx, &kafka.DescribeACLsRequest{Filter: kafka.ACLFilter{
			ResourceTypeFilter: rt, ResourceNameFilter: name, ResourcePatternTypeFilter: kafka.PatternTypeLiteral,
			PrincipalFilter: "User:" + user, Operation: kafka.ACLOperationTypeAny, PermissionType: kafka.ACLPermissionTypeAny}})
		if err != nil || r.Error != nil {
			return false
		}
		n := 0
		for _, res := range r.Resources {
			n += len(res.ACLs)
		}
		return n >= len(ops)
	}, "ACLs of %s on %v %s not visible", user, rt, name)
}

// grantIngest gives the user what an ingest needs for topics and group,
// exactly the two ACLs docs/operations.md lists: READ on each topic (it
// implies DESCRIBE), READ on the group — nothing else.
func (k *kafkaServer) grantIngest(t *testing.T, user, group string, topics ...string) {
	t.Helper()
	for _, tp := range topics {
		k.allow(t, user, kafka.ResourceTypeTopic, tp, kafka.ACLOperationTypeRead)
	}
	k.allow(t, user, kafka.ResourceTypeGroup, group, kafka.ACLOperationTypeRead)
}

// groupMembers returns the members of a Kafka consumer group.
func (k *kafkaServer) groupMembers(t *testing.T, group string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := k.admin().DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{group}})
	if err != nil {
		t.Fatalf("describe group %s: %v", group, err)
	}
	if len(res.Groups) != 1 {
		return 0
	}
	return len(res.Groups[0].Members)
}

// ---------------------------------------------------------------- Redis

// redisServer is a redis-server of one test (scripts/redis.sh), optionally
// TLS-only and with a password for the default user.
type redisServer struct {
	port        int
	dir         string
	tlsDir      string // "" without TLS
	authClients string // tls-auth-clients
	password    string // of the default user, "" for none
}

type redisOpts struct {
	tls         bool
	authClients string // yes, optional or no
	password    string
}

func startRedis(t *testing.T, o redisOpts) *redisServer {
	t.Helper()
	if !testenv.RealRedis() {
		t.Skip("needs redis-server (scripts/test.sh installs it and sets REDIS_ADDR)")
	}
	r := &redisServer{port: freePorts(t, 1)[0], dir: t.TempDir(), authClients: o.authClients, password: o.password}
	if o.tls {
		r.tlsDir = certs(t)
	}
	if out, err := script("redis.sh", r.env(), "start"); err != nil {
		t.Fatalf("redis.sh start: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := script("redis.sh", r.env(), "stop"); err != nil {
			t.Errorf("redis.sh stop: %v\n%s", err, out)
		}
	})
	return r
}

func (r *redisServer) env() []string {
	env := []string{"REDIS_PORT=" + strconv.Itoa(r.port), "REDIS_DATA_DIR=" + r.dir, "REDIS_PERSIST=none"}
	if r.tlsDir != "" {
		env = append(env, "REDIS_TLS=1", "REDIS_TLS_DIR="+r.tlsDir, "REDIS_TLS_AUTH_CLIENTS="+r.authClients)
	}
	if r.password != "" {
		env = append(env, "REDIS_PASSWORD="+r.password)
	}
	return env
}

// url is the URL kbridge gets: rediss:// with TLS, the user (no password:
// that goes in a file) when not "".
func (r *redisServer) url(user string) string {
	scheme := "redis"
	if r.tlsDir != "" {
		scheme = "rediss"
	}
	if user != "" {
		user += "@"
	}
	return fmt.Sprintf("%s://%s127.0.0.1:%d/0", scheme, user, r.port)
}

// tlsFlags are kbridge's flags to trust the test CA and present the client
// certificate.
func (r *redisServer) tlsFlags() []string {
	if r.tlsDir == "" {
		return nil
	}
	return []string{"--redis-tls-ca", filepath.Join(r.tlsDir, "ca.crt"),
		"--redis-tls-cert", filepath.Join(r.tlsDir, "client.crt"), "--redis-tls-key", filepath.Join(r.tlsDir, "client.key")}
}

// admin returns a client of the default user (with the client certificate).
func (r *redisServer) admin(t *testing.T) *redis.Client {
	t.Helper()
	opt := &redis.Options{Addr: addr(r.port), Password: r.password, ContextTimeoutEnabled: true}
	if r.tlsDir != "" {
		u, err := redis.ParseURL(r.url(""))
		if err != nil {
			t.Fatal(err)
		}
		opt.TLSConfig = u.TLSConfig
		ca, err := os.ReadFile(filepath.Join(r.tlsDir, "ca.crt"))
		if err != nil {
			t.Fatal(err)
		}
		opt.TLSConfig.RootCAs = x509.NewCertPool()
		opt.TLSConfig.RootCAs.AppendCertsFromPEM(ca)
		pair, err := tls.LoadX509KeyPair(filepath.Join(r.tlsDir, "client.crt"), filepath.Join(r.tlsDir, "client.key"))
		if err != nil {
			t.Fatal(err)
		}
		opt.TLSConfig.Certificates = []tls.Certificate{pair}
	}
	c := redis.NewClient(opt)
	t.Cleanup(func() { c.Close() })
	return c
}

// ---------------------------------------------------------------- ledger

// ledger is the file a `kbridge worker --exec` appends "<partition> <offset>"
// to for every record it handles.
type ledger string

func newLedger(t *testing.T) ledger { return ledger(filepath.Join(t.TempDir(), "ledger")) }

// execCmd is the worker's --exec command; E2E_LEDGER names the file (the
// worker passes its environment to the command, KBRIDGE_ variables aside).
// While the file E2E_POISON names exists, record 0/7 fails.
const execCmd = `if [ -n "$E2E_POISON" ] && [ -e "$E2E_POISON" ] && [ "$KBRIDGE_PARTITION" = 0 ] && [ "$KBRIDGE_OFFSET" = 7 ]; then exit 1; fi
printf '%s %s\n' "$KBRIDGE_PARTITION" "$KBRIDGE_OFFSET" >>"$E2E_LEDGER"`

func (l ledger) env() string { return "E2E_LEDGER=" + string(l) }

// handled returns how many times each (partition, offset) was handled.
func (l ledger) handled(t *testing.T) map[[2]int64]int {
	t.Helper()
	out := map[[2]int64]int{}
	f, err := os.Open(string(l))
	if os.IsNotExist(err) {
		return out
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var p, o int64
		if _, err := fmt.Sscanf(sc.Text(), "%d %d", &p, &o); err == nil {
			out[[2]int64{p, o}]++
		}
	}
	return out
}

// missing returns the records below the log ends that were never handled.
func (l ledger) missing(t *testing.T, ends map[int]int64) (missing int, first string) {
	t.Helper()
	h := l.handled(t)
	for p, end := range ends {
		for o := int64(0); o < end; o++ {
			if h[[2]int64{int64(p), o}] == 0 {
				if missing == 0 {
					first = fmt.Sprintf("%d/%d", p, o)
				}
				missing++
			}
		}
	}
	return missing, first
}

// delPrefix deletes the keys of a test's prefix from a shared Redis.
func delPrefix(rdb *redis.Client, prefix string) {
	ctx := context.Background()
	iter := rdb.Scan(ctx, 0, prefix+":*", 1000).Iterator()
	for iter.Next(ctx) {
		rdb.Del(ctx, iter.Val())
	}
}

type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}
