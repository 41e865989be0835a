package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/urfave/cli/v2"
)

// TestSecurityFlagErrors: bad TLS, SASL and secret-file flags exit 2 with
// every reason at once, before connecting to anything, and no secret given
// on the command line shows up in what kbridge prints.
func TestSecurityFlagErrors(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hunter2-in-a-file"), 0o600); err != nil {
		t.Fatal(err)
	}
	blank := filepath.Join(dir, "blank")
	if err := os.WriteFile(blank, []byte(" \t \r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const secret = "s3cret-on-argv"
	for _, tt := range []struct {
		name string
		args []string
		want []string
	}{
		{"redis tls flags without rediss", []string{"--redis-url", "redis://u:" + secret + "@127.0.0.1:1/0", "--redis-tls-ca", notPEM, "--redis-tls-cert", notPEM, "status"},
			[]string{"--redis-tls-ca needs a rediss:// URL", "--redis-tls-cert needs a rediss:// URL", "redis://u:xxxxx@127.0.0.1:1/0"}},
		{"redis empty password file", []string{"--redis-url", "rediss://u:" + secret + "@127.0.0.1:1/0", "--redis-password-file", empty, "status"},
			[]string{"--redis-password-file: " + empty + ": the first line is empty"}},
		{"redis password in file and url", []string{"--redis-url", "rediss://u:" + secret + "@127.0.0.1:1/0", "--redis-password-file", notPEM, "worker", "--exec", "true"},
			[]string{"--redis-password-file and a password in --redis-url: give one of them"}},
		{"redis bad ca and half a key pair", []string{"--redis-url", "rediss://127.0.0.1:1/0", "--redis-tls-ca", notPEM, "--redis-tls-key", notPEM, "dlq", "list"},
			[]string{"--redis-tls-ca: " + notPEM + ": no PEM certificate in it", "--redis-tls-cert and --redis-tls-key go together"}},
		{"redis bad key pair", []string{"--redis-url", "rediss://127.0.0.1:1/0", "--redis-tls-cert", notPEM, "--redis-tls-key", notPEM, "status"},
			[]string{"--redis-tls-cert/--redis-tls-key:"}},
		{"redis missing password file", []string{"--redis-password-file", filepath.Join(dir, "nope"), "status"},
			[]string{"--redis-password-file: open " + filepath.Join(dir, "nope")}},
		{"kafka password twice", []string{"ingest", "--topics", "t", "--kafka-sasl", "plain", "--kafka-username", "u", "--kafka-password", secret, "--kafka-password-file", notPEM},
			[]string{"--kafka-password and --kafka-password-file: give one of them"}},
		{"kafka sasl without user or password", []string{"ingest", "--topics", "t", "--kafka-sasl", "scram-sha-512"},
			[]string{"--kafka-sasl scram-sha-512 needs --kafka-username", "--kafka-sasl scram-sha-512 needs a password"}},
		{"kafka credentials without sasl", []string{"status", "--kafka-username", "u", "--kafka-password", secret},
			[]string{"--kafka-password are set but --kafka-sasl is not"}},
		{"kafka tls ca without tls", []string{"produce", "--topic", "t", "--kafka-tls-ca", notPEM},
			[]string{"--kafka-tls-ca is set but --kafka-tls is not"}},
		{"kafka ca with insecure", []string{"ingest", "--topics", "t", "--kafka-tls", "--kafka-tls-ca", notPEM, "--kafka-tls-insecure"},
			[]string{"--kafka-tls-ca and --kafka-tls-insecure contradict each other"}},
		{"redis whitespace-only password file", []string{"--redis-url", "rediss://u@127.0.0.1:1/0", "--redis-password-file", blank, "dlq", "list"},
			[]string{"--redis-password-file: " + blank + ": the first line is only white space"}},
		{"kafka whitespace-only password file", []string{"status", "--kafka-sasl", "plain", "--kafka-username", "u", "--kafka-password-file", blank},
			[]string{"--kafka-password-file: " + blank + ": the first line is only white space"}},
		{"skip_verify with a CA, single", []string{"--redis-url", "rediss://127.0.0.1:1/0?skip_verify=true", "--redis-tls-ca", notPEM, "dlq", "list"},
			[]string{"?skip_verify=true in --redis-url and --redis-tls-ca contradict each other"}},
		{"skip_verify with a CA, cluster", []string{"--redis-cluster", "--redis-url", "rediss://127.0.0.1:1/0?skip_verify=true&addr=127.0.0.1:2", "--redis-tls-ca", notPEM, "dlq", "list"},
			[]string{"?skip_verify=true in --redis-url and --redis-tls-ca contradict each other"}},
		{"skip_verify without TLS", []string{"--redis-url", "redis://127.0.0.1:1/0?skip_verify=true", "dlq", "list"},
			[]string{"?skip_verify in --redis-url needs a rediss:// URL"}},
		{"skip_verify not a bool", []string{"--redis-cluster", "--redis-url", "rediss://127.0.0.1:1/0?skip_verify=maybe", "dlq", "list"},
			[]string{`skip_verify="maybe": want true or false`}},
		{"reload interval without cluster", []string{"--redis-cluster-reload-interval", "2s", "dlq", "list"},
			[]string{"--redis-cluster-reload-interval needs --redis-cluster"}},
		{"reload interval zero", []string{"--redis-cluster", "--redis-cluster-reload-interval", "0s", "dlq", "list"},
			[]string{"--redis-cluster-reload-interval 0s must be above 0"}},
		{"unparsable URL and a bad password file at once", []string{"--redis-url", "redis://u:" + secret + "%zz@127.0.0.1:1/0", "--redis-password-file", blank, "status"},
			[]string{"--redis-url is not a valid URL", "--redis-password-file: " + blank}},
		{"conformance refuses the files it cannot pass on", []string{"--redis-tls-ca", notPEM, "conformance", "--", "true"},
			[]string{"--redis-tls-ca is not taken here"}},
		{"demo refuses the files it would ignore", []string{"demo", "--redis-password-file", blank, "--redis-tls-cert", notPEM},
			[]string{"--redis-password-file is not taken here", "--redis-tls-cert is not taken here"}},
		{"kafka bad ca and empty password file", []string{"ingest", "--topics", "t", "--kafka-tls", "--kafka-tls-ca", notPEM,
			"--kafka-sasl", "plain", "--kafka-username", "u", "--kafka-password-file", empty},
			[]string{"--kafka-tls-ca: " + notPEM + ": no PEM certificate in it", "--kafka-password-file: " + empty + ": the first line is empty"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, errs, code := runCLI(t, tt.args...)
			if code != 2 {
				t.Errorf("kbridge %v: exit %d, want 2\nstderr %s", tt.args, code, errs)
			}
			for _, w := range tt.want {
				if !strings.Contains(errs, w) {
					t.Errorf("kbridge %v: stderr %q, want %q in it", tt.args, errs, w)
				}
			}
			for _, s := range []string{secret, "hunter2"} {
				if strings.Contains(out+errs, s) {
					t.Errorf("kbridge %v printed the secret %q:\n%s%s", tt.args, s, out, errs)
				}
			}
		})
	}
}

// TestRedisSecurityOptions: --redis-password-file, --redis-tls-ca and the
// client key pair reach go-redis's options, for a single Redis and a cluster.
func TestRedisSecurityOptions(t *testing.T) {
	dir := t.TempDir()
	ca, cert, key := writeTestKeyPair(t, dir)
	pwFile := filepath.Join(dir, "pw")
	if err := os.WriteFile(pwFile, []byte("from-the-file\r\nsecond line ignored\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, cluster := range []bool{false, true} {
		args := []string{"kbridge", "--redis-url", "rediss://kbridge@127.0.0.1:6380/0", "--redis-password-file", pwFile,
			"--redis-tls-ca", ca, "--redis-tls-cert", cert, "--redis-tls-key", key}
		if cluster {
			args = append(args, "--redis-cluster")
		}
		app := &cli.App{Flags: commonFlags(), Action: func(c *cli.Context) error {
			rdb, err := newRedis(c)
			if err != nil {
				return err
			}
			defer rdb.Close()
			var user, pass string
			var certs int
			var roots bool
			switch r := rdb.(type) {
			case *redis.Client:
				o := r.Options()
				user, pass, certs, roots = o.Username, o.Password, len(o.TLSConfig.Certificates), o.TLSConfig.RootCAs != nil
			case *redis.ClusterClient:
				o := r.Options()
				user, pass, certs, roots = o.Username, o.Password, len(o.TLSConfig.Certificates), o.TLSConfig.RootCAs != nil
			}
			if user != "kbridge" || pass != "from-the-file" || certs != 1 || !roots {
				t.Errorf("cluster=%v: user %q, password %q, %d client certificates, root CAs set %v; want kbridge, from-the-file, 1, true",
					cluster, user, pass, certs, roots)
			}
			return nil
		}}
		if err := app.Run(args); err != nil {
			t.Fatalf("cluster=%v: %v", cluster, err)
		}
	}
}

// writeTestKeyPair writes a self-signed certificate (used both as the CA and
// as the client certificate) and its key as PEM files; returns their paths.
func writeTestKeyPair(t *testing.T, dir string) (ca, cert, key string) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kbridge test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, cert, key
}

// TestSecretFileBOM: a UTF-8 byte order mark (which some editors write
// first) and the line ending are not part of the password; the first line
// only counts.
func TestSecretFileBOM(t *testing.T) {
	f := filepath.Join(t.TempDir(), "pw")
	for _, tt := range []struct{ content, want string }{
		{"\ufeffpw-1\r\n", "pw-1"},
		{"\ufeffpw 2\nsecond", "pw 2"},
		{"pw-3", "pw-3"},
		{" pw-4 \n", " pw-4 "}, // spaces around a password are kept: they may be part of it
	} {
		if err := os.WriteFile(f, []byte(tt.content), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := readSecretFile(f)
		if err != nil || got != tt.want {
			t.Errorf("readSecretFile(%q) = %q, %v; want %q", tt.content, got, err, tt.want)
		}
	}
}

// TestConflictNamesTheEnvironment: when a value that conflicts with another
// came from an environment variable, the error names the variable (the user
// may not see it on the command line).
func TestConflictNamesTheEnvironment(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KBRIDGE_KAFKA_PASSWORD", "env-secret")
	t.Setenv("KBRIDGE_REDIS_URL", "rediss://u:env-secret@127.0.0.1:1/0")
	_, errs, code := runCLI(t, "--redis-password-file", pw, "ingest", "--topics", "t", "--kafka-sasl", "scram-sha-512",
		"--kafka-username", "u", "--kafka-password-file", pw)
	if code != 2 {
		t.Errorf("exit %d, want 2", code)
	}
	for _, w := range []string{"KBRIDGE_KAFKA_PASSWORD (environment) and --kafka-password-file: give one of them",
		"--redis-password-file and a password in KBRIDGE_REDIS_URL (environment): give one of them"} {
		if !strings.Contains(errs, w) {
			t.Errorf("stderr lacks %q:\n%s", w, errs)
		}
	}
	if strings.Contains(errs, "env-secret") {
		t.Errorf("the password is printed:\n%s", errs)
	}
}

// TestPlainWithoutTLSWarns: --kafka-sasl plain without --kafka-tls sends
// the password unencrypted: kbridge says so (and still starts: a trusted
// network or an encrypting sidecar are legitimate); with TLS, or with SCRAM,
// it says nothing.
func TestPlainWithoutTLSWarns(t *testing.T) {
	var buf strings.Builder
	old := stderr
	stderr = &buf
	t.Cleanup(func() { stderr = old })
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("p\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		args []string
		warn bool
	}{
		{[]string{"--kafka-sasl", "plain"}, true},
		{[]string{"--kafka-sasl", "plain", "--kafka-tls"}, false},
		{[]string{"--kafka-sasl", "scram-sha-256"}, false},
	} {
		buf.Reset()
		// --partition-cap 0 stops the ingest after its flag checks.
		runCLI(t, append([]string{"ingest", "--topics", "t", "--partition-cap", "0", "--kafka-username", "u", "--kafka-password-file", pw}, tt.args...)...)
		if got := strings.Contains(buf.String(), "crosses the network unencrypted"); got != tt.warn {
			t.Errorf("%v: warned %v, want %v\n%s", tt.args, got, tt.warn, buf.String())
		}
	}
}

// TestClusterTLSServerNamePerNode: with rediss:// and --redis-cluster, each
// node's certificate is checked against that node's own host, not against
// the seed's (go-redis shares one TLS config, with the seed's host as
// ServerName, between all nodes). The e2e test TestClusterTLS runs it on a
// real cluster whose nodes have certificates of their own.
func TestClusterTLSServerNamePerNode(t *testing.T) {
	app := &cli.App{Flags: commonFlags(), Action: func(c *cli.Context) error {
		rdb, err := newRedis(c)
		if err != nil {
			return err
		}
		defer rdb.Close()
		o := rdb.(*redis.ClusterClient).Options()
		if o.TLSConfig.ServerName != "seed.example" || !o.TLSConfig.InsecureSkipVerify {
			t.Errorf("seed TLS config: ServerName %q, InsecureSkipVerify %v; want seed.example, true (skip_verify=true)", o.TLSConfig.ServerName, o.TLSConfig.InsecureSkipVerify)
		}
		if o.ClusterStateReloadInterval != 1500*time.Millisecond {
			t.Errorf("ClusterStateReloadInterval %v, want 1.5s", o.ClusterStateReloadInterval)
		}
		for _, tt := range []struct{ addr, want string }{{"10.0.0.7:6379", "10.0.0.7"}, {"node-2.redis:6380", "node-2.redis"}, {"[::1]:7000", "::1"}} {
			no := &redis.Options{Addr: tt.addr, TLSConfig: o.TLSConfig}
			cl := o.NewClient(no)
			cl.Close()
			if got := cl.Options().TLSConfig.ServerName; got != tt.want {
				t.Errorf("node %s: ServerName %q, want %q", tt.addr, got, tt.want)
			}
			if !cl.Options().TLSConfig.InsecureSkipVerify {
				t.Errorf("node %s: the node's TLS config lost the URL's skip_verify", tt.addr)
			}
		}
		if o.TLSConfig.ServerName != "seed.example" {
			t.Errorf("the shared TLS config was modified: ServerName %q", o.TLSConfig.ServerName)
		}
		return nil
	}}
	if err := app.Run([]string{"kbridge", "--redis-cluster", "--redis-cluster-reload-interval", "1500ms",
		"--redis-url", "rediss://seed.example:6380/0?addr=10.0.0.8:6380&skip_verify=true"}); err != nil {
		t.Fatal(err)
	}
}
