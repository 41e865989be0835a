package chaos

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
)

// Producer writes records at a steady rate, spread evenly over the
// partitions (sequence number modulo the partition count), and records each
// one Kafka acknowledged in the ledger. A failed write (a broker restarting)
// is retried until it succeeds: a retry of a write that did land makes a
// second copy in Kafka, which the checker tells apart by the sequence number.
type Producer struct {
	Brokers    []string // direct, not through the proxy
	Topic      string
	Partitions int
	Rate       int // records per second
	Size       int // value bytes
	Ledger     *Ledger
	Log        *slog.Logger

	next    atomic.Int64 // next sequence number
	retries atomic.Int64
}

// Written returns how many sequence numbers were handed to Kafka so far.
func (p *Producer) Written() int64 { return p.next.Load() }

// Retries returns how many writes failed and were retried.
func (p *Producer) Retries() int64 { return p.retries.Load() }

// Run produces until ctx is done.
func (p *Producer) Run(ctx context.Context) {
	w := &kafka.Writer{
		Addr:  kafka.TCP(p.Brokers...),
		Topic: p.Topic,
		Balancer: kafka.BalancerFunc(func(m kafka.Message, partitions ...int) int {
			seq, _ := strconv.ParseInt(string(m.Key), 10, 64)
			want := int(seq % int64(p.Partitions))
			for _, id := range partitions {
				if id == want {
					return id
				}
			}
			return partitions[int(seq%int64(len(partitions)))]
		}),
		BatchSize:    1000,
		BatchTimeout: 2 * time.Millisecond,
		RequiredAcks: kafka.RequireAll,
		MaxAttempts:  3,
		WriteTimeout: 10 * time.Second,
		ReadTimeout:  10 * time.Second,
	}
	defer w.Close()
	const tick = 50 * time.Millisecond
	began := time.Now()
	var owed float64
	last := began
	for ctx.Err() == nil {
		sleepCtx(ctx, tick)
		now := time.Now()
		owed += now.Sub(last).Seconds() * float64(p.Rate)
		last = now
		n := int(owed)
		if n <= 0 {
			continue
		}
		owed -= float64(n)
		msgs := make([]kafka.Message, n)
		for i := range msgs {
			seq := p.next.Add(1) - 1
			msgs[i] = kafka.Message{Key: []byte(strconv.FormatInt(seq, 10)), Value: Value(seq, p.Size)}
		}
		p.write(ctx, w, msgs)
		// Time spent retrying is not owed afterwards: no burst after an outage.
		last = time.Now()
	}
}

// write writes msgs until every one is acknowledged or ctx is done.
func (p *Producer) write(ctx context.Context, w *kafka.Writer, msgs []kafka.Message) {
	backoff := 100 * time.Millisecond
	for len(msgs) > 0 && ctx.Err() == nil {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := w.WriteMessages(wctx, msgs...)
		cancel()
		var failed []kafka.Message
		var werrs kafka.WriteErrors
		switch {
		case err == nil:
		case errors.As(err, &werrs):
			for i, e := range werrs {
				if e != nil {
					failed = append(failed, msgs[i])
				}
			}
		default:
			failed = msgs
		}
		now := time.Now()
		for _, m := range msgs {
			if !contains(failed, m) {
				seq, _ := strconv.ParseInt(string(m.Key), 10, 64)
				p.Ledger.Produced(seq, now)
			}
		}
		if len(failed) == 0 {
			return
		}
		p.retries.Add(1)
		if p.Log != nil && ctx.Err() == nil {
			p.Log.Debug("produce failed; retrying", "records", len(failed), "err", err)
		}
		msgs = failed
		sleepCtx(ctx, backoff)
		backoff = min(2*backoff, 2*time.Second)
	}
}

func contains(ms []kafka.Message, m kafka.Message) bool {
	for _, x := range ms {
		if string(x.Key) == string(m.Key) {
			return true
		}
	}
	return false
}
