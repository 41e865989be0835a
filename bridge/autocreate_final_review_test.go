package bridge

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"io"
	"net"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
)

// Break-it review R-final (issue 7 point 1): the group Dialer's wrapper that
// clears allow_auto_topic_creation (autocreate.go).

// finalReq is one request: size, api key, version, correlation id, body.
func finalReq(key, version uint16, corr uint32, body ...byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(8+len(body)))
	b = binary.BigEndian.AppendUint16(b, key)
	b = binary.BigEndian.AppendUint16(b, version)
	b = binary.BigEndian.AppendUint32(b, corr)
	return append(b, body...)
}

// TestFinalReviewNoAutoCreatePipelined: several requests in one Write (a
// bufio flush of pipelined requests), a request whose size prefix itself is
// split across Writes, and a large request (a SyncGroup of 1,000
// partitions, written in 4 KiB bufio pieces) all pass whole, in order, with
// only the Metadata flags cleared. Held up.
func TestFinalReviewNoAutoCreatePipelined(t *testing.T) {
	topics := []byte{0, 0, 0, 1, 0, 1, 'x'}
	big := bytes.Repeat([]byte{1}, 40000)
	in := bytes.Join([][]byte{
		finalReq(3, 6, 1, append(topics, 1)...),
		finalReq(11, 5, 2, 1, 1, 1),
		finalReq(3, 8, 3, append(topics, 1, 1, 1)...),
		finalReq(14, 3, 4, big...),
		finalReq(3, 5, 5, append(topics, 1)...),
	}, nil)
	want := bytes.Join([][]byte{
		finalReq(3, 6, 1, append(topics, 0)...),
		finalReq(11, 5, 2, 1, 1, 1),
		finalReq(3, 8, 3, append(topics, 0, 1, 1)...),
		finalReq(14, 3, 4, big...),
		finalReq(3, 5, 5, append(topics, 0)...),
	}, nil)
	for _, pieces := range [][]int{{len(in)}, {2, 5, 11}, {4096}, {len(in) - 1}} {
		client, server := net.Pipe()
		c := &noAutoCreateConn{Conn: client}
		errc := make(chan error, 1)
		go func() {
			rest := in
			for i := 0; len(rest) > 0; i++ {
				n := min(pieces[i%len(pieces)], len(rest))
				m, err := c.Write(rest[:n])
				if err != nil || m != n {
					errc <- err
					return
				}
				rest = rest[n:]
			}
			errc <- nil
		}()
		got := make([]byte, len(want))
		_ = server.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(server, got); err != nil {
			t.Fatalf("pieces %v: %v", pieces, err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("pieces %v: write: %v", pieces, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("pieces %v: the requests were changed beyond the Metadata flags", pieces)
		}
		if c.buf != nil {
			t.Errorf("pieces %v: %d bytes left buffered after whole requests", pieces, len(c.buf))
		}
		client.Close()
		server.Close()
	}
	t.Logf("%d bytes of 5 pipelined requests passed in 4 splittings, the 3 Metadata flags cleared", len(in))
}

// TestFinalReviewNoAutoCreateTLSOnly: a TLS-only listener (no SASL), the
// server name left unset (inferred from the address, as kafka-go does), the
// CA the test server's: the wrapper does the handshake and the broker side
// reads, in clear, a Metadata v6 request with the flag cleared. A Dialer
// whose TLS config names another server fails the handshake (the check can
// fail). Held up.
func TestFinalReviewNoAutoCreateTLSOnly(t *testing.T) {
	srv := httptest.NewUnstartedServer(nil)
	srv.StartTLS() // only for its certificate (valid for 127.0.0.1)
	defer srv.Close()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: srv.TLS.Certificates})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	topics := []byte{0, 0, 0, 1, 0, 1, 'x'}
	got := make(chan []byte, 4)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				b := make([]byte, len(finalReq(3, 6, 1, append(topics, 1)...)))
				_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
				if _, err := io.ReadFull(conn, b); err == nil {
					got <- b
				}
			}()
		}
	}()
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	d := noAutoCreate(&kafka.Dialer{Timeout: 10 * time.Second, DualStack: true, TLS: &tls.Config{RootCAs: pool}})
	if d.TLS != nil {
		t.Fatal("the wrapped Dialer still has TLS: kafka-go would wrap the TLS connection again")
	}
	conn, err := d.DialFunc(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("TLS dial with the server name inferred from the address: %v", err)
	}
	if _, err := conn.Write(finalReq(3, 6, 1, append(topics, 1)...)); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-got:
		if b[len(b)-1] != 0 {
			t.Errorf("over TLS the broker read allow_auto_topic_creation=%d", b[len(b)-1])
		}
	case <-ctx.Done():
		t.Fatal("the broker side read nothing over TLS")
	}
	conn.Close()

	bad := noAutoCreate(&kafka.Dialer{Timeout: 10 * time.Second, TLS: &tls.Config{RootCAs: pool, ServerName: "not-this-host"}})
	if c, err := bad.DialFunc(ctx, "tcp", ln.Addr().String()); err == nil {
		c.Close()
		t.Error("a TLS config naming another server passed the handshake: the check above proves nothing")
	} else {
		t.Logf("TLS-only: flag cleared through TLS; a wrong server name fails: %v", err)
	}
}
