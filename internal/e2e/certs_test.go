package e2e

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
)

// TestCertsScript: scripts/certs.sh keeps a valid set as it is, adds the
// certificate of a new NAME with the same CA, makes a whole new set (new
// CA) when a certificate would expire within CERTS_MIN_VALIDITY seconds,
// and writes server certificates usable by both ends of a TLS connection
// (a Redis Cluster node presents its server certificate to the others).
func TestCertsScript(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("needs openssl")
	}
	dir := filepath.Join(t.TempDir(), "tls")
	run := func(env []string, names ...string) {
		t.Helper()
		if out, err := script("certs.sh", env, append([]string{dir}, names...)...); err != nil {
			t.Fatalf("certs.sh: %v\n%s", err, out)
		}
	}
	read := func(name string) []byte {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cert := func(name string) *x509.Certificate {
		t.Helper()
		b, _ := pem.Decode(read(name))
		if b == nil {
			t.Fatalf("%s: no PEM block", name)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	verify := func(name string) {
		t.Helper()
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(read("ca.crt"))
		if _, err := cert(name).Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Errorf("%s does not chain to ca.crt: %v", name, err)
		}
	}

	run(nil, "node-a")
	ca1 := read("ca.crt")
	for _, name := range []string{"server.crt", "server-node-a.crt"} {
		c := cert(name)
		if !slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageServerAuth) || !slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
			t.Errorf("%s: extended key usage %v, want serverAuth and clientAuth", name, c.ExtKeyUsage)
		}
		verify(name)
	}
	if c := cert("server-node-a.crt"); !slices.Equal(c.DNSNames, []string{"node-a"}) || len(c.IPAddresses) != 1 || c.IPAddresses[0].String() != "127.0.0.1" {
		t.Errorf("server-node-a.crt: DNS %v IP %v, want [node-a] [127.0.0.1]", c.DNSNames, c.IPAddresses)
	}

	serverA := read("server-node-a.crt")
	run(nil, "node-a", "node-b") // node-b is new: added with the same CA, the rest kept
	if !bytes.Equal(read("ca.crt"), ca1) || !bytes.Equal(read("server-node-a.crt"), serverA) {
		t.Errorf("adding a NAME replaced the CA or another certificate")
	}
	verify("server-node-b.crt")

	// Every certificate is valid for 7 days: asking for 8 is "about to expire".
	run([]string{"CERTS_MIN_VALIDITY=691200"})
	if bytes.Equal(read("ca.crt"), ca1) {
		t.Fatalf("certificates that expire too soon were kept")
	}
	for _, name := range []string{"server.crt", "client.crt", "server-node-a.crt", "server-node-b.crt"} {
		verify(name) // the named ones were made again with the new CA
	}
	t.Logf("kept while valid, NAME added with the same CA, whole set renewed (new CA, %d named certificates) before expiry", 2)
}
