package chaos

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// echoServer echoes every line back until the connection ends.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String()
}

func newTestProxy(t *testing.T, target string) *Proxy {
	t.Helper()
	p, err := NewProxy("127.0.0.1:0", target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func roundTrip(c net.Conn, msg string, within time.Duration) (string, error) {
	_ = c.SetDeadline(time.Now().Add(within))
	if _, err := c.Write([]byte(msg + "\n")); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return line, err
}

func TestProxyRelays(t *testing.T) {
	p := newTestProxy(t, echoServer(t))
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, msg := range []string{"one", "two", string(make([]byte, 100_000))} {
		got, err := roundTrip(c, msg, 5*time.Second)
		if err != nil || got != msg+"\n" {
			t.Fatalf("round trip of %d bytes: got %d bytes, err %v", len(msg)+1, len(got), err)
		}
	}
	if p.Live() != 1 || p.Accepted() != 1 {
		t.Errorf("live %d accepted %d, want 1 and 1", p.Live(), p.Accepted())
	}
}

func TestProxyCutMidStream(t *testing.T) {
	p := newTestProxy(t, echoServer(t))
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := roundTrip(c, "before", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if n := p.Cut(); n != 1 {
		t.Fatalf("Cut cut %d connections, want 1", n)
	}
	// The client sees its connection fail (reset), not a hang.
	_, err = roundTrip(c, "after", 5*time.Second)
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("after the cut: err %v, want a reset or EOF", err)
	}
	// A new connection works.
	c2, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if got, err := roundTrip(c2, "again", 5*time.Second); err != nil || got != "again\n" {
		t.Fatalf("new connection after the cut: %q %v", got, err)
	}
}

func TestProxyDownUp(t *testing.T) {
	p := newTestProxy(t, echoServer(t))
	p.Down()
	c, err := net.Dial("tcp", p.Addr())
	if err == nil {
		_, err = roundTrip(c, "x", 5*time.Second)
		c.Close()
	}
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("while down: err %v, want a refused or reset connection", err)
	}
	p.Up()
	c, err = net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, err := roundTrip(c, "up", 5*time.Second); err != nil || got != "up\n" {
		t.Fatalf("after Up: %q %v", got, err)
	}
}

func TestProxyFreezeThaw(t *testing.T) {
	p := newTestProxy(t, echoServer(t))
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p.Freeze()
	_, err = roundTrip(c, "held", 300*time.Millisecond)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("while frozen: err %v, want a timeout (bytes held)", err)
	}
	p.Thaw()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || got != "held\n" {
		t.Fatalf("after Thaw: %q %v, want the held bytes", got, err)
	}
}

func TestProxyTargetDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	p := newTestProxy(t, dead)
	c, err := net.Dial("tcp", p.Addr())
	if err == nil {
		_, err = roundTrip(c, "x", 5*time.Second)
		c.Close()
	}
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("server down: err %v, want a reset", err)
	}
}
