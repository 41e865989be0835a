package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/urfave/cli/v2"
)

// produceCommand is "kbridge produce": a load generator for real topics.
func produceCommand() *cli.Command {
	return &cli.Command{
		Name:  "produce",
		Usage: "write test records (JSON orders) to a Kafka topic: a load generator with a progress bar",
		Description: `Writes --count records, or for --duration, at --rate records per second (0:
as fast as the broker takes them). Each value is a JSON order padded to
--size bytes, {"id":N,"customer":"c42","amount_cents":1234,"ts":...,"pad":"..."};
keys are "k<0..keys-1>" (--keys 0: null keys, spread round-robin). With
--partitions N the topic is created with N partitions if it does not exist.

Progress goes to stderr (a bar on a terminal, a line every 5s otherwise); the
summary line goes to stdout.

Examples:
   kbridge produce --topic orders --partitions 8 --count 100000
   kbridge produce --topic orders --duration 5m --rate 2000 --size 1024
   KBRIDGE_BROKERS=kafka:9092 kbridge produce --topic orders --count 1000000 --rate 0 --keys 0`,
		Flags: append(kafkaFlags(),
			&cli.StringFlag{Name: "topic", EnvVars: []string{"KBRIDGE_PRODUCE_TOPIC"}, Usage: "topic to write to (required)"},
			&cli.Int64Flag{Name: "count", Value: 10000, EnvVars: []string{"KBRIDGE_PRODUCE_COUNT"}, Usage: "records to write (with --duration: at most this many, 0 = no limit)"},
			&cli.DurationFlag{Name: "duration", EnvVars: []string{"KBRIDGE_PRODUCE_DURATION"}, Usage: "write for this long instead of --count records"},
			&cli.Float64Flag{Name: "rate", Value: 1000, EnvVars: []string{"KBRIDGE_PRODUCE_RATE"}, Usage: "records per second; 0 = as fast as possible"},
			&cli.IntFlag{Name: "size", Value: 256, EnvVars: []string{"KBRIDGE_PRODUCE_SIZE"}, Usage: "value size in bytes (the JSON order is padded to it)"},
			&cli.IntFlag{Name: "keys", Value: 1000, EnvVars: []string{"KBRIDGE_PRODUCE_KEYS"}, Usage: "distinct keys (k0, k1, ...); 0 = null keys"},
			&cli.IntFlag{Name: "partitions", EnvVars: []string{"KBRIDGE_PRODUCE_PARTITIONS"}, Usage: "create the topic with this many partitions if it does not exist (default: do not create)"},
			&cli.IntFlag{Name: "replication-factor", Value: 1, EnvVars: []string{"KBRIDGE_PRODUCE_REPLICATION_FACTOR"}, Usage: "replication factor of a topic created with --partitions"},
			&cli.IntFlag{Name: "batch", Value: 500, EnvVars: []string{"KBRIDGE_PRODUCE_BATCH"}, Usage: "records per produce request"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, EnvVars: []string{"KBRIDGE_PRODUCE_QUIET"}, Usage: "no progress, only the summary"},
		),
		Action: runProduce,
	}
}

// produceOptions are the validated flags of "kbridge produce".
type produceOptions struct {
	brokers    []string
	transport  *kafka.Transport
	topic      string
	count      int64
	duration   time.Duration
	rate       float64
	size       int
	keys       int
	partitions int
	replicas   int
	batch      int
}

func produceConfig(c *cli.Context) (produceOptions, error) {
	var probs []string
	tlsCfg, mech := kafkaSecurity(c, &probs)
	o := produceOptions{
		brokers: splitList(c.StringSlice("brokers")), transport: &kafka.Transport{TLS: tlsCfg, SASL: mech},
		topic: c.String("topic"), count: c.Int64("count"), duration: c.Duration("duration"), rate: c.Float64("rate"),
		size: c.Int("size"), keys: c.Int("keys"), partitions: c.Int("partitions"), replicas: c.Int("replication-factor"),
		batch: c.Int("batch"),
	}
	if c.NArg() > 0 {
		probs = append(probs, fmt.Sprintf("produce takes no arguments, got %q", c.Args().Slice()))
	}
	if o.topic == "" {
		probs = append(probs, "--topic is required")
	}
	if len(o.brokers) == 0 {
		probs = append(probs, "--brokers is empty: give host:port of a Kafka broker")
	}
	if o.count < 0 {
		probs = append(probs, fmt.Sprintf("--count %d must not be negative", o.count))
	}
	if o.duration < 0 {
		probs = append(probs, fmt.Sprintf("--duration %v must not be negative", o.duration))
	}
	if o.duration == 0 && o.count == 0 {
		probs = append(probs, "--count 0 without --duration would write forever: give one of them")
	}
	if o.duration > 0 && !c.IsSet("count") {
		o.count = 0 // --duration alone: no count limit
	}
	if o.rate < 0 {
		probs = append(probs, fmt.Sprintf("--rate %v must not be negative (0 = as fast as possible)", o.rate))
	}
	if o.size < 0 || o.size > 10<<20 {
		probs = append(probs, fmt.Sprintf("--size %d must be between 0 and 10 MiB", o.size))
	}
	if o.keys < 0 {
		probs = append(probs, fmt.Sprintf("--keys %d must not be negative (0 = null keys)", o.keys))
	}
	if o.partitions < 0 {
		probs = append(probs, fmt.Sprintf("--partitions %d must not be negative", o.partitions))
	}
	if o.replicas < 1 {
		probs = append(probs, fmt.Sprintf("--replication-factor %d must be at least 1", o.replicas))
	}
	if o.batch < 1 {
		probs = append(probs, fmt.Sprintf("--batch %d must be at least 1", o.batch))
	}
	if len(probs) > 0 {
		return o, cli.Exit("invalid produce options:\n  - "+strings.Join(probs, "\n  - "), 2)
	}
	return o, nil
}

func runProduce(c *cli.Context) error {
	o, err := produceConfig(c)
	if err != nil {
		return err
	}
	log, err := newLogger(c)
	if err != nil {
		return err
	}
	ctx, stop := signalContext(log, nil)
	defer stop()
	if o.partitions > 0 {
		if err := ensureTopic(ctx, o.brokers, o.transport, o.topic, o.partitions, o.replicas); err != nil {
			return cli.Exit(err.Error(), 1)
		}
	}
	var prog *progress
	if !c.Bool("quiet") {
		prog = newProgress(c.App.ErrWriter, o.count, o.duration)
	}
	start := time.Now()
	n, bytes, err := produce(ctx, o, 0, prog.update)
	prog.done()
	took := time.Since(start)
	fmt.Fprintf(c.App.Writer, "produced %d records (%s) to %s in %s: %.0f records/s\n",
		n, fmtBytes(bytes), o.topic, took.Round(time.Millisecond), float64(n)/max(took.Seconds(), 1e-9))
	if err != nil && ctx.Err() == nil {
		return cli.Exit(err.Error(), 1)
	}
	return nil
}

// ensureTopic creates topic with the given partitions unless it exists, and
// waits until its partitions have leaders.
func ensureTopic(ctx context.Context, brokers []string, tr *kafka.Transport, topic string, partitions, replicas int) error {
	cl := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second, Transport: roundTripper(tr)}
	res, err := cl.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
		Topic: topic, NumPartitions: partitions, ReplicationFactor: replicas,
	}}})
	if err != nil {
		return fmt.Errorf("create topic %s: %w", topic, err)
	}
	if e := res.Errors[topic]; e != nil && !errors.Is(e, kafka.TopicAlreadyExists) {
		return fmt.Errorf("create topic %s: %w", topic, e)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		md, err := cl.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
		if err == nil && len(md.Topics) == 1 && md.Topics[0].Error == nil && len(md.Topics[0].Partitions) > 0 {
			ready := true
			for _, p := range md.Topics[0].Partitions {
				if p.Error != nil || p.Leader.Host == "" {
					ready = false
				}
			}
			if ready {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("topic %s has no leaders after 30s: %v", topic, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// produce writes o.count records (or for o.duration) with ids from first on,
// calling report after each batch. It returns the records and value bytes
// written.
func produce(ctx context.Context, o produceOptions, first int64, report func(n int64)) (int64, int64, error) {
	w := &kafka.Writer{
		Addr:         kafka.TCP(o.brokers...),
		Topic:        o.topic,
		Transport:    roundTripper(o.transport),
		BatchSize:    o.batch,
		BatchBytes:   16 << 20,
		BatchTimeout: 5 * time.Millisecond,
		RequiredAcks: kafka.RequireAll,
	}
	if o.keys > 0 {
		w.Balancer = &kafka.Hash{}
	} else {
		w.Balancer = &kafka.RoundRobin{}
	}
	defer w.Close()
	rnd := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	start := time.Now()
	var deadline time.Time
	if o.duration > 0 {
		deadline = start.Add(o.duration)
	}
	chunk := int64(o.batch)
	if o.rate > 0 {
		chunk = max(1, min(chunk, int64(o.rate/20))) // about 20 writes a second: a smooth rate
	}
	var n, bytes int64
	msgs := make([]kafka.Message, 0, chunk)
	for o.count == 0 || n < o.count {
		if !deadline.IsZero() && !time.Now().Before(deadline) {
			break
		}
		if o.rate > 0 {
			due := start.Add(time.Duration(float64(n) / o.rate * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				select {
				case <-ctx.Done():
					return n, bytes, ctx.Err()
				case <-time.After(d):
				}
			}
		}
		k := chunk
		if o.count > 0 {
			k = min(k, o.count-n)
		}
		msgs = msgs[:0]
		for i := range k {
			id := first + n + i
			m := kafka.Message{Value: orderValue(id, o.size, rnd)}
			if o.keys > 0 {
				m.Key = []byte("k" + strconv.Itoa(rnd.IntN(o.keys)))
			}
			bytes += int64(len(m.Value))
			msgs = append(msgs, m)
		}
		if err := w.WriteMessages(ctx, msgs...); err != nil {
			return n, bytes, fmt.Errorf("produce to %s: %w", o.topic, err)
		}
		n += k
		if report != nil {
			report(n)
		}
	}
	return n, bytes, nil
}

// roundTripper returns tr as a kafka.RoundTripper, or nil (the default
// transport) for nil: a nil *Transport in the interface would be used.
func roundTripper(tr *kafka.Transport) kafka.RoundTripper {
	if tr == nil {
		return nil
	}
	return tr
}

// orderValue is a JSON order with the given id, padded to size bytes.
func orderValue(id int64, size int, rnd *rand.Rand) []byte {
	b := make([]byte, 0, max(size, 96))
	b = append(b, `{"id":`...)
	b = strconv.AppendInt(b, id, 10)
	b = append(b, `,"customer":"c`...)
	b = strconv.AppendInt(b, int64(rnd.IntN(10000)), 10)
	b = append(b, `","amount_cents":`...)
	b = strconv.AppendInt(b, int64(100+rnd.IntN(100000)), 10)
	b = append(b, `,"ts":`...)
	b = strconv.AppendInt(b, time.Now().UnixMilli(), 10)
	if pad := size - len(b) - len(`,"pad":""}`); pad > 0 {
		b = append(b, `,"pad":"`...)
		for range pad {
			b = append(b, 'x')
		}
		b = append(b, '"')
	}
	return append(b, '}')
}

// orderID reads the id back from an orderValue.
func orderID(v []byte) (int64, bool) {
	s, ok := strings.CutPrefix(string(v[:min(len(v), 32)]), `{"id":`)
	if !ok {
		return 0, false
	}
	end := strings.IndexByte(s, ',')
	if end < 0 {
		return 0, false
	}
	id, err := strconv.ParseInt(s[:end], 10, 64)
	return id, err == nil
}

// progress draws a progress bar on a terminal, or prints a line every 5s.
type progress struct {
	w        io.Writer
	total    int64
	duration time.Duration
	start    time.Time
	last     time.Time
	tty      bool
	n        int64
}

func newProgress(w io.Writer, total int64, duration time.Duration) *progress {
	return &progress{w: w, total: total, duration: duration, start: time.Now(), tty: isTerminal(w)}
}

func (p *progress) update(n int64) {
	if p == nil {
		return
	}
	p.n = n
	now := time.Now()
	every := 5 * time.Second
	if p.tty {
		every = 100 * time.Millisecond
	}
	if now.Sub(p.last) < every {
		return
	}
	p.last = now
	p.draw(now)
}

func (p *progress) draw(now time.Time) {
	el := now.Sub(p.start)
	rate := float64(p.n) / max(el.Seconds(), 1e-9)
	frac := -1.0
	if p.total > 0 {
		frac = float64(p.n) / float64(p.total)
	}
	if p.duration > 0 {
		frac = max(frac, min(float64(el)/float64(p.duration), 1))
	}
	line := fmt.Sprintf("%d records  %.0f/s  %s", p.n, rate, el.Round(time.Second))
	if frac >= 0 {
		const width = 30
		fill := int(frac * width)
		bar := strings.Repeat("=", fill) + strings.Repeat(" ", width-fill)
		if fill < width {
			bar = bar[:fill] + ">" + bar[fill+1:]
		}
		eta := "-"
		if frac > 0 {
			eta = (time.Duration(float64(el)/frac) - el).Round(time.Second).String()
		}
		line = fmt.Sprintf("[%s] %3.0f%%  %s  eta %s", bar, frac*100, line, eta)
	}
	if p.tty {
		fmt.Fprintf(p.w, "\r%s\033[K", line)
	} else {
		fmt.Fprintln(p.w, line)
	}
}

func (p *progress) done() {
	if p == nil {
		return
	}
	p.draw(time.Now())
	if p.tty {
		fmt.Fprintln(p.w)
	}
}

func fmtBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
