package chaos

import (
	"context"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/wire"
)

// Delivery is one call of the recording handler: a worker handed it the
// record at Partition/Offset for the Deliveries-th time.
type Delivery struct {
	At         time.Time
	Partition  int
	Offset     int64
	Seq        int64 // the producer's sequence number, from the value; -1 if absent
	Deliveries int64 // Kbridge-Deliveries: 1 for the first delivery of an entry
	Worker     string
	Replayed   bool
}

// Ledger records what the producer wrote (acknowledged by Kafka) and what
// the workers handled, outside Redis, so that no fault of the system under
// test can touch it. Safe for concurrent use.
type Ledger struct {
	Topic string
	// Delay is how long the handler takes per record (0: answer at once).
	Delay time.Duration
	// PoisonEvery makes every record whose sequence number is a multiple
	// of it fail (HTTP 500) on every delivery, so that it ends in a
	// dead-letter stream; 0: none. Set before serving.
	PoisonEvery int64

	mu         sync.Mutex
	produced   map[int64]time.Time // seq → acknowledged by Kafka
	deliveries []Delivery
	parts      map[int]*partLedger
	dead       map[pOff]time.Time // dead letters seen in Redis, first seen
	bad        []string           // requests the handler could not read
	poisoned   map[pOff]int       // failed calls of poison records
	poisonSeq  map[int64]bool     // their sequence numbers
}

type pOff struct {
	p   int
	off int64
}

type partLedger struct {
	count  map[int64]int32 // offset → deliveries handled
	prefix int64           // every offset below has been handled
}

// NewLedger returns an empty ledger for topic.
func NewLedger(topic string) *Ledger {
	return &Ledger{Topic: topic, produced: map[int64]time.Time{}, parts: map[int]*partLedger{}, dead: map[pOff]time.Time{},
		poisoned: map[pOff]int{}, poisonSeq: map[int64]bool{}}
}

// Produced records that Kafka acknowledged the record with sequence seq.
func (l *Ledger) Produced(seq int64, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.produced[seq]; !ok {
		l.produced[seq] = at
	}
}

// ProducedCount returns how many distinct sequence numbers Kafka acknowledged.
func (l *Ledger) ProducedCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.produced)
}

// Record adds one delivery.
func (l *Ledger) Record(d Delivery) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.deliveries = append(l.deliveries, d)
	pl := l.parts[d.Partition]
	if pl == nil {
		pl = &partLedger{count: map[int64]int32{}}
		l.parts[d.Partition] = pl
	}
	pl.count[d.Offset]++
	l.advance(d.Partition, pl)
}

// advance moves the handled prefix of partition p past what was handled or
// dead-lettered (a dead letter is never handled: without this, one would
// stop the prefix for good, and every commit sample would scan from it).
func (l *Ledger) advance(p int, pl *partLedger) {
	for {
		if pl.count[pl.prefix] > 0 {
			pl.prefix++
			continue
		}
		if _, ok := l.dead[pOff{p, pl.prefix}]; ok {
			pl.prefix++
			continue
		}
		return
	}
}

// Handled returns how many distinct offsets were handled, in all.
func (l *Ledger) Handled() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, pl := range l.parts {
		n += len(pl.count)
	}
	return n
}

// DeliveryCount returns how many deliveries were recorded, in all.
func (l *Ledger) DeliveryCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.deliveries)
}

// Prefix returns the lowest offset of partition p neither handled nor seen
// dead-lettered: every offset below it was one or the other.
func (l *Ledger) Prefix(p int) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if pl := l.parts[p]; pl != nil {
		return pl.prefix
	}
	return 0
}

// Unhandled returns the offsets in [from, to) of partition p that were
// neither handled nor seen dead-lettered, at most limit of them.
func (l *Ledger) Unhandled(p int, from, to int64, limit int) []int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []int64
	pl := l.parts[p]
	for off := from; off < to && len(out) < limit; off++ {
		if pl != nil && pl.count[off] > 0 {
			continue
		}
		if _, ok := l.dead[pOff{p, off}]; ok {
			continue
		}
		out = append(out, off)
	}
	return out
}

// Deliveries returns a copy of every delivery, in the order recorded.
func (l *Ledger) Deliveries() []Delivery {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.deliveries)
}

// Dead returns the dead letters seen so far (partition/offset → first seen).
func (l *Ledger) Dead() map[pOff]time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[pOff]time.Time, len(l.dead))
	for k, v := range l.dead {
		out[k] = v
	}
	return out
}

// ServeHTTP is the handler the `kbridge worker --http` processes POST to, at
// /h/<worker name>: it records the delivery and answers 204.
func (l *Ledger) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	at := time.Now()
	worker := strings.TrimPrefix(r.URL.Path, "/h/")
	h := r.Header
	p, err1 := strconv.Atoi(h.Get("Kbridge-Partition"))
	off, err2 := strconv.ParseInt(h.Get("Kbridge-Offset"), 10, 64)
	n, err3 := strconv.ParseInt(h.Get("Kbridge-Deliveries"), 10, 64)
	body := make([]byte, 64)
	k, _ := r.Body.Read(body)
	if err1 != nil || err2 != nil || err3 != nil || h.Get("Kbridge-Topic") != l.Topic {
		l.mu.Lock()
		l.bad = append(l.bad, r.URL.Path+" "+h.Get("Kbridge-Topic")+"/"+h.Get("Kbridge-Partition")+"/"+h.Get("Kbridge-Offset"))
		l.mu.Unlock()
		// Answered 400: a permanent failure, so the record ends in the
		// dead-letter stream, where the checker finds it.
		http.Error(w, "bad delivery", http.StatusBadRequest)
		return
	}
	seq := parseSeq(body[:k])
	if l.PoisonEvery > 0 && seq >= 0 && seq%l.PoisonEvery == 0 {
		l.mu.Lock()
		l.poisoned[pOff{p, off}]++
		l.poisonSeq[seq] = true
		l.mu.Unlock()
		http.Error(w, "poison record", http.StatusInternalServerError)
		return
	}
	l.Record(Delivery{At: at, Partition: p, Offset: off, Seq: seq, Deliveries: n,
		Worker: worker, Replayed: h.Get("Kbridge-Replayed") == "1"})
	if l.Delay > 0 {
		time.Sleep(l.Delay)
	}
	w.WriteHeader(http.StatusNoContent)
}

// Poisoned returns the poison records the handler failed, with their
// calls, and their sequence numbers.
func (l *Ledger) Poisoned() (map[pOff]int, map[int64]bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[pOff]int, len(l.poisoned))
	for k, v := range l.poisoned {
		out[k] = v
	}
	seqs := make(map[int64]bool, len(l.poisonSeq))
	for k := range l.poisonSeq {
		seqs[k] = true
	}
	return out, seqs
}

// BadRequests returns the deliveries the handler could not read.
func (l *Ledger) BadRequests() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.bad)
}

// Serve serves the handler on addr ("127.0.0.1:0" for any port) until ctx
// is done; it returns the address.
func (l *Ledger) Serve(ctx context.Context, addr string) (string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	srv := &http.Server{Handler: l, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	go func() {
		<-ctx.Done()
		c, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(c)
	}()
	return ln.Addr().String(), nil
}

// WatchDeadLetters reads the dead-letter streams of partitions [0,n) of the
// topic under prefix every interval until ctx is done, and remembers every
// dead letter it sees: a later Redis restart may erase them (the checker
// then counts them as lost: "dead letter erased").
func (l *Ledger) WatchDeadLetters(ctx context.Context, rdb *redis.Client, prefix string, n int, interval time.Duration) {
	for {
		l.ScanDeadLetters(ctx, rdb, prefix, n)
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}

// ScanDeadLetters reads every dead-letter stream once.
func (l *Ledger) ScanDeadLetters(ctx context.Context, rdb *redis.Client, prefix string, n int) {
	pipe := rdb.Pipeline()
	cmds := make([]*redis.XMessageSliceCmd, n)
	for p := range n {
		cmds[p] = pipe.XRange(ctx, wire.DLQKey(wire.StreamKey(prefix, l.Topic, p)), "-", "+")
	}
	_, _ = pipe.Exec(ctx)
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	for p, c := range cmds {
		msgs, err := c.Result()
		if err != nil {
			continue
		}
		for _, m := range msgs {
			s, _ := m.Values[wire.FieldOffset].(string)
			off, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				continue
			}
			k := pOff{p, off}
			if _, ok := l.dead[k]; !ok {
				l.dead[k] = now
			}
		}
		if pl := l.parts[p]; pl != nil {
			l.advance(p, pl)
		}
	}
}

// Value returns the value the producer writes for seq: "chaos:<seq>:"
// padded with dots to size bytes.
func Value(seq int64, size int) []byte {
	v := []byte("chaos:" + strconv.FormatInt(seq, 10) + ":")
	for len(v) < size {
		v = append(v, '.')
	}
	return v
}

func parseSeq(b []byte) int64 {
	s, ok := strings.CutPrefix(string(b), "chaos:")
	if !ok {
		return -1
	}
	num, _, ok := strings.Cut(s, ":")
	if !ok {
		return -1
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil {
		return -1
	}
	return n
}
