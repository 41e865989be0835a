package bridge

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/kbridge/kbridge/internal/testenv"
)

// TestGroupLeaderNeverCreatesTopics (issue 7 point 1, review finding 2):
// the call kafka-go's group leader makes to read the members' topics
// (Conn.ReadPartitions: Metadata v6 with allow_auto_topic_creation set),
// made through the group's Dialer, creates no topic on a broker that creates
// topics on demand (the stand-in does; scripts/kafka.sh's broker and
// Kafka's default do). Through kafka-go's own Dialer it does: the check that
// the test can fail.
func TestGroupLeaderNeverCreatesTopics(t *testing.T) {
	brokers := testenv.Kafka(t)
	exists := func(topic string) bool {
		tr := &kafka.Transport{}
		defer tr.CloseIdleConnections()
		cl := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second, Transport: tr}
		res, err := cl.Metadata(context.Background(), &kafka.MetadataRequest{Topics: []string{topic}})
		if err != nil {
			t.Fatalf("metadata %s: %v", topic, err)
		}
		for _, tm := range res.Topics {
			if tm.Name == topic {
				return tm.Error == nil
			}
		}
		return false
	}
	readPartitions := func(d *kafka.Dialer, topic string) {
		conn, err := d.DialContext(context.Background(), "tcp", brokers[0])
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, _ = conn.ReadPartitions(topic) // unknown topic: an error, or the topic created
	}
	plain := &kafka.Dialer{Timeout: 10 * time.Second}
	ours, theirs := testenv.Name(t)+"-ours", testenv.Name(t)+"-theirs"
	readPartitions(noAutoCreate(plain), ours)
	readPartitions(plain, theirs)
	// A broker creates the topic after answering: wait for the one asked
	// through kafka-go's dialer, then look at the other.
	deadline := time.Now().Add(10 * time.Second)
	gotTheirs := exists(theirs)
	for !gotTheirs && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		gotTheirs = exists(theirs)
	}
	gotOurs := exists(ours)
	t.Logf("after ReadPartitions of an unknown topic: through the group's dialer created=%v, through kafka-go's own created=%v", gotOurs, gotTheirs)
	if gotOurs {
		t.Errorf("the group's connection created topic %s", ours)
	}
	if !gotTheirs {
		t.Skipf("the broker does not create topics on demand: the check above proves nothing here")
	}
}

// TestClearAutoCreate: the flag is cleared in Metadata v4-v8 requests
// written in any number of pieces, and nothing else is changed.
func TestClearAutoCreate(t *testing.T) {
	req := func(key, version uint16, body ...byte) []byte {
		b := binary.BigEndian.AppendUint32(nil, uint32(8+len(body)))
		b = binary.BigEndian.AppendUint16(b, key)
		b = binary.BigEndian.AppendUint16(b, version)
		b = binary.BigEndian.AppendUint32(b, 7) // correlation id (the client id is part of body here)
		return append(b, body...)
	}
	topics := []byte{0, 0, 0, 1, 0, 1, 'x'} // one topic "x"
	cases := []struct {
		name    string
		in, out []byte
	}{
		{"metadata v6", req(3, 6, append(topics, 1)...), req(3, 6, append(topics, 0)...)},
		{"metadata v4", req(3, 4, append(topics, 1)...), req(3, 4, append(topics, 0)...)},
		{"metadata v8", req(3, 8, append(topics, 1, 1, 1)...), req(3, 8, append(topics, 0, 1, 1)...)},
		{"metadata v1", req(3, 1, topics...), req(3, 1, topics...)},
		{"join group", req(11, 5, 1, 1, 1), req(11, 5, 1, 1, 1)},
	}
	for _, tc := range cases {
		for _, piece := range []int{1, 3, len(tc.in)} {
			client, server := net.Pipe()
			c := &noAutoCreateConn{Conn: client}
			go func() {
				in := append([]byte(nil), tc.in...)
				for len(in) > 0 {
					n := min(piece, len(in))
					if _, err := c.Write(in[:n]); err != nil {
						return
					}
					in = in[n:]
				}
			}()
			got := make([]byte, len(tc.out))
			_ = server.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(server, got); err != nil {
				t.Fatalf("%s in pieces of %d: %v", tc.name, piece, err)
			}
			if !bytes.Equal(got, tc.out) {
				t.Errorf("%s in pieces of %d: sent %x, want %x", tc.name, piece, got, tc.out)
			}
			client.Close()
			server.Close()
		}
	}
}
