package bridge

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"net"
	"strings"
	"sync"

	"github.com/segmentio/kafka-go"
)

// kafka-go's consumer group leader reads the partitions of every topic a
// member subscribes to with Conn.ReadPartitions, a Metadata request (v6)
// that always sets allow_auto_topic_creation. On a broker with
// auto.create.topics.enable=true (Kafka's default) a topic deleted while a
// member of the group still subscribes to it — even for the few
// milliseconds of a rebalance in progress — is created again at once, empty
// and with a new topic ID, and its partitions then stall as recreated (issue
// 7 point 1, review finding 2). kafka-go has no option for it, so the
// group's connections clear that flag on the way out: noAutoCreate wraps the
// group's Dialer so that every Metadata request of version 4 to 8 it sends
// asks for no auto-creation. The ingest's own metadata requests never ask
// for it (metadata.go). Other requests pass unchanged. A broker older than
// Kafka 2.0 (highest Metadata version 4 or 5) is sent version 1 by
// ReadPartitions, which has no such flag and always auto-creates: there only
// auto.create.topics.enable=false helps (docs/operations.md).

// noAutoCreate returns a copy of d whose connections clear
// allow_auto_topic_creation in the Metadata requests they send. TLS, when
// d has it, is done here (below the rewriting, which must see the requests
// in clear), as kafka-go's Dialer does it: the same config, the server
// name inferred from the address when unset; SASL stays kafka-go's.
func noAutoCreate(d *kafka.Dialer) *kafka.Dialer {
	out := *d
	cfg, dial := d.TLS, d.DialFunc
	if dial == nil {
		dial = (&net.Dialer{LocalAddr: d.LocalAddr, DualStack: d.DualStack, FallbackDelay: d.FallbackDelay,
			KeepAlive: d.KeepAlive}).DialContext
	}
	out.TLS = nil
	out.DialFunc = func(ctx context.Context, network, address string) (net.Conn, error) {
		conn, err := dial(ctx, network, address)
		if err != nil {
			return nil, err
		}
		if cfg != nil {
			c := cfg
			if c.ServerName == "" {
				c = cfg.Clone()
				host := address
				if i := strings.LastIndex(address, ":"); i >= 0 {
					host = address[:i]
				}
				c.ServerName = host
			}
			tc := tls.Client(conn, c)
			if err := tc.HandshakeContext(ctx); err != nil {
				conn.Close()
				return nil, err
			}
			conn = tc
		}
		return &noAutoCreateConn{Conn: conn}, nil
	}
	return &out
}

// noAutoCreateConn passes every request through whole, once all its bytes
// were written (kafka-go writes a request completely before reading its
// response), clearing allow_auto_topic_creation in Metadata requests v4-v8.
type noAutoCreateConn struct {
	net.Conn
	mu  sync.Mutex
	buf []byte // the start of a request not yet complete
}

// metadataKey is the Metadata API key.
const metadataKey = 3

func (c *noAutoCreateConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf = append(c.buf, b...)
	for len(c.buf) >= 4 {
		n := 4 + int(binary.BigEndian.Uint32(c.buf))
		if len(c.buf) < n {
			break
		}
		clearAutoCreate(c.buf[:n])
		if _, err := c.Conn.Write(c.buf[:n]); err != nil {
			c.buf = c.buf[:0]
			return 0, err
		}
		c.buf = c.buf[n:]
	}
	if len(c.buf) == 0 {
		c.buf = nil
	}
	return len(b), nil
}

// clearAutoCreate sets allow_auto_topic_creation to false in req (size
// prefix included) when it is a Metadata request of version 4 to 8, where
// the flag is the last byte (v4-v7) or the third from last (v8, followed by
// the two include_*_authorized_operations flags). Later versions are
// flexible (tagged fields at the end); kafka-go's Conn does not send them.
func clearAutoCreate(req []byte) {
	if len(req) < 8 || binary.BigEndian.Uint16(req[4:]) != metadataKey {
		return
	}
	switch v := binary.BigEndian.Uint16(req[6:]); {
	case v >= 4 && v <= 7:
		req[len(req)-1] = 0
	case v == 8 && len(req) >= 11:
		req[len(req)-3] = 0
	}
}
