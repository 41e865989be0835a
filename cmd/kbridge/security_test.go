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
