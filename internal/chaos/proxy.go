package chaos

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy is a loopback TCP proxy between kbridge and a server (Kafka or
// Redis). It relays bytes both ways and can fail the network in three ways:
// Cut resets every live connection mid-stream, Down refuses new connections
// (each is reset as soon as it is accepted) until Up, and Freeze holds every
// byte, in both directions and on new connections alike, until Thaw — a
// network partition that drops packets, which only timeouts detect. Its
// methods are safe for concurrent use.
type Proxy struct {
	target string
	ln     net.Listener

	mu     sync.Mutex
	conns  map[*link]struct{}
	down   bool
	thawed chan struct{} // closed while not frozen
	closed bool

	accepted atomic.Int64
	cuts     atomic.Int64
	wg       sync.WaitGroup
}

// link is one proxied connection: the client's side and the server's side.
type link struct{ client, server net.Conn }

// NewProxy listens on listen (e.g. "127.0.0.1:0") and relays every
// connection to target, dialled when the connection is accepted.
func NewProxy(listen, target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	p := &Proxy{target: target, ln: ln, conns: map[*link]struct{}{}, thawed: make(chan struct{})}
	close(p.thawed)
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr returns the address clients connect to.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Target returns the address of the server behind the proxy.
func (p *Proxy) Target() string { return p.target }

// Accepted returns how many connections the proxy accepted so far.
func (p *Proxy) Accepted() int64 { return p.accepted.Load() }

// Live returns how many connections are open through the proxy now.
func (p *Proxy) Live() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Cut resets every live connection (both sides, with RST) and returns how
// many it cut. New connections are accepted as usual.
func (p *Proxy) Cut() int {
	p.mu.Lock()
	links := make([]*link, 0, len(p.conns))
	for l := range p.conns {
		links = append(links, l)
		delete(p.conns, l)
	}
	p.mu.Unlock()
	for _, l := range links {
		l.reset()
	}
	p.cuts.Add(int64(len(links)))
	return len(links)
}

// Down cuts every live connection and resets new ones until Up.
func (p *Proxy) Down() int {
	p.mu.Lock()
	p.down = true
	p.mu.Unlock()
	return p.Cut()
}

// Up accepts connections again after Down.
func (p *Proxy) Up() {
	p.mu.Lock()
	p.down = false
	p.mu.Unlock()
}

// Freeze stops relaying: bytes read are held, and nothing more is written
// either way, on every connection, until Thaw.
func (p *Proxy) Freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.thawed:
		p.thawed = make(chan struct{})
	default: // already frozen
	}
}

// Thaw relays again what Freeze held, and everything after it.
func (p *Proxy) Thaw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.thawed:
	default:
		close(p.thawed)
	}
}

func (p *Proxy) gate() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.thawed
}

// Close stops listening and resets every connection. It is idempotent.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	err := p.ln.Close()
	p.Thaw()
	p.Cut()
	p.wg.Wait()
	return err
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		p.accepted.Add(1)
		p.wg.Add(1)
		go p.serve(c)
	}
}

func (p *Proxy) serve(c net.Conn) {
	defer p.wg.Done()
	p.mu.Lock()
	down, closed := p.down, p.closed
	p.mu.Unlock()
	if down || closed {
		resetConn(c)
		return
	}
	// A frozen network does not even complete the connection to the server.
	<-p.gate()
	s, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		resetConn(c) // the server is down: the client sees a reset
		return
	}
	l := &link{client: c, server: s}
	p.mu.Lock()
	if p.down || p.closed {
		p.mu.Unlock()
		l.reset()
		return
	}
	p.conns[l] = struct{}{}
	p.mu.Unlock()

	var done sync.WaitGroup
	done.Add(2)
	go func() { defer done.Done(); p.relay(s, c) }()
	go func() { defer done.Done(); p.relay(c, s) }()
	done.Wait()
	p.mu.Lock()
	delete(p.conns, l)
	p.mu.Unlock()
	l.reset()
}

// relay copies from src to dst until either fails, holding each chunk while
// the proxy is frozen. When src ends cleanly (EOF) the write side of dst is
// closed, so a client's orderly close reaches the server.
func (p *Proxy) relay(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			<-p.gate()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				_ = src.Close()
				_ = dst.Close()
				return
			}
		}
		if err != nil {
			if tc, ok := dst.(*net.TCPConn); ok && errors.Is(err, io.EOF) {
				_ = tc.CloseWrite()
				return
			}
			_ = src.Close()
			_ = dst.Close()
			return
		}
	}
}

func (l *link) reset() {
	resetConn(l.client)
	resetConn(l.server)
}

// resetConn closes c with a TCP reset (SO_LINGER 0), as a broken network
// would, rather than an orderly FIN.
func resetConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}
