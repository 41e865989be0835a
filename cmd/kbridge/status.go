package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"
	"github.com/urfave/cli/v2"

	"github.com/kbridge/kbridge/bridge"
	"github.com/kbridge/kbridge/internal/wire"
)

// statusCommand is "kbridge status": where every partition stands, computed
// from Kafka and Redis alone, so it works from any machine, with the ingest
// running or not.
func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show, per partition, Kafka log end, committed offset and lag, stream backlog, pending entries and who holds the oldest",
		Description: `Reads Kafka (log end and the ingest group's committed offsets) and Redis (the
stream registry, each stream's top, length, worker groups and pending entries,
and the ingest's status hash) and prints one line per partition:

  LOG-END     the partition's log end offset (next offset Kafka will write)
  COMMITTED   the ingest group's committed offset: everything below was processed
  LAG         LOG-END - COMMITTED: records not yet processed, in Kafka or in Redis
  TOP         offset of the last record appended to the stream
  LEN         XLEN of the stream (entries not yet trimmed)
  BACKLOG     records in the stream some worker group has not acknowledged
              (what --partition-cap applies to)
  PENDING     entries delivered to a worker and not acknowledged yet
  OLDEST      the lowest pending offset: the record that holds the commit, its
              delivery count, how long since it was delivered (or its lease
              extended), and the consumer that holds it
  PAUSED      yes while the ingest does not fetch the partition (stream full);
              STALLED when it stopped fetching and committing it, with the
              reason on a line below the table (an entry another program
              wrote into the stream, a recreated topic: docs/operations.md);
              "-" when no ingest published a status (none runs, or it is gone)
  DLQ         dead letters of the partition
  OWNER       the ingest process (host:pid) and the age of its status

It needs no ingest: everything but PAUSED and OWNER is read from Kafka and
Redis directly. Without --topics it shows the partitions registered in Redis.

Examples:
   kbridge --redis-url redis://redis:6379/0 status --brokers kafka:9092
   kbridge status --topics orders --watch
   kbridge status --json | jq '.partitions[] | select(.kafka_lag > 10000)'
   KBRIDGE_GROUP=kbridge-eu kbridge status --watch --interval 5s`,
		Flags: append(kafkaFlags(),
			&cli.StringFlag{Name: "group", Value: "kbridge", EnvVars: []string{"KBRIDGE_GROUP"}, Usage: "Kafka consumer group of the ingest"},
			&cli.StringSliceFlag{Name: "topics", EnvVars: []string{"KBRIDGE_TOPICS"},
				Usage: "only these topics, with every partition Kafka has (default: every stream registered in Redis)"},
			&cli.StringSliceFlag{Name: "worker-groups", EnvVars: []string{"KBRIDGE_WORKER_GROUPS"},
				Usage: "only these worker groups count for backlog and pending (default: every group on the stream)"},
			&cli.BoolFlag{Name: "json", EnvVars: []string{"KBRIDGE_STATUS_JSON"}, Usage: "print JSON (with --watch, one document per line)"},
			&cli.BoolFlag{Name: "watch", Aliases: []string{"w"}, EnvVars: []string{"KBRIDGE_STATUS_WATCH"}, Usage: "refresh every --interval until interrupted"},
			&cli.DurationFlag{Name: "interval", Value: 2 * time.Second, EnvVars: []string{"KBRIDGE_STATUS_INTERVAL"}, Usage: "refresh interval of --watch"},
			&cli.DurationFlag{Name: "timeout", Value: 10 * time.Second, EnvVars: []string{"KBRIDGE_STATUS_TIMEOUT"}, Usage: "how long one refresh may wait for Kafka and Redis"},
		),
		Action: runStatus,
	}
}

// statusReport is what "kbridge status" prints; its JSON form is stable.
type statusReport struct {
	Time       time.Time       `json:"time"`
	Group      string          `json:"group"`
	Prefix     string          `json:"prefix"`
	Partitions []partitionView `json:"partitions"`
	Totals     statusTotals    `json:"totals"`
	// Errors lists what could not be read; the fields it would have filled
	// are -1 (unknown).
	Errors []string `json:"errors,omitempty"`
}

type statusTotals struct {
	KafkaLag    int64 `json:"kafka_lag"`
	Backlog     int64 `json:"backlog"`
	Pending     int64 `json:"pending"`
	Paused      int   `json:"paused"`
	DeadLetters int64 `json:"dead_letters"`
}

// partitionView is one partition. -1 means unknown or none.
type partitionView struct {
	Topic     string `json:"topic"`
	Partition int    `json:"partition"`
	Stream    string `json:"stream"`

	LogEnd    int64 `json:"log_end"`
	Committed int64 `json:"committed"`
	KafkaLag  int64 `json:"kafka_lag"`

	StreamExists bool          `json:"stream_exists"`
	Top          int64         `json:"stream_top"`
	Length       int64         `json:"stream_length"`
	Backlog      int64         `json:"backlog"`
	Pending      int64         `json:"pending"`
	Oldest       *oldestView   `json:"oldest_pending,omitempty"`
	Groups       []groupView   `json:"groups"`
	DeadLetters  int64         `json:"dead_letters"`
	Ingest       *ingestStatus `json:"ingest,omitempty"`
}

// oldestView is the lowest pending entry over the groups: the one that
// holds the commit back.
type oldestView struct {
	Offset     int64  `json:"offset"`
	Group      string `json:"group"`
	Consumer   string `json:"consumer"`
	IdleMs     int64  `json:"idle_ms"`
	Deliveries int64  `json:"deliveries"`
	// RecordAgeMs is how old the record is (now - its Kafka timestamp).
	RecordAgeMs int64 `json:"record_age_ms,omitempty"`
}

type groupView struct {
	Name          string `json:"name"`
	LastDelivered string `json:"last_delivered_id"`
	Pending       int64  `json:"pending"`
	// Backlog is the records from the group's lowest un-acknowledged offset
	// to the stream's top.
	Backlog int64 `json:"backlog"`
}

// ingestStatus is what the ingest owning the partition published in its
// status hash (absent when no ingest runs, or it stopped more than its TTL
// ago).
type ingestStatus struct {
	Paused    bool      `json:"paused"`
	Stalled   string    `json:"stalled,omitempty"` // why the partition stopped for good, if it did
	Owner     string    `json:"owner"`
	Updated   time.Time `json:"updated"`
	Committed int64     `json:"committed"`
	Backlog   int64     `json:"backlog"`
}

// statusSource is where runStatus reads from.
type statusSource struct {
	kafka        *kafka.Client
	rdb          redis.UniversalClient
	prefix       string
	group        string
	topics       []string
	workerGroups []string
}

func runStatus(c *cli.Context) error {
	if c.NArg() > 0 {
		return cli.Exit(fmt.Sprintf("status takes no arguments, got %q", c.Args().Slice()), 2)
	}
	var probs []string
	tlsCfg, mech := kafkaSecurity(c, &probs)
	probs = append(probs, redisProblems(c)...)
	brokers := splitList(c.StringSlice("brokers"))
	if len(brokers) == 0 {
		probs = append(probs, "--brokers is empty: give host:port of a Kafka broker")
	}
	if c.Duration("interval") <= 0 {
		probs = append(probs, fmt.Sprintf("--interval %v must be above 0", c.Duration("interval")))
	}
	if c.Duration("timeout") <= 0 {
		probs = append(probs, fmt.Sprintf("--timeout %v must be above 0", c.Duration("timeout")))
	}
	if c.String("group") == "" {
		probs = append(probs, "--group must not be empty")
	}
	if len(probs) > 0 {
		return cli.Exit("invalid status options:\n  - "+strings.Join(probs, "\n  - "), 2)
	}
	log, err := newLogger(c)
	if err != nil {
		return err
	}
	rdb, err := newRedis(c)
	if err != nil {
		return err
	}
	defer rdb.Close()
	src := statusSource{
		kafka:        &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: c.Duration("timeout"), Transport: &kafka.Transport{TLS: tlsCfg, SASL: mech}},
		rdb:          rdb,
		prefix:       c.String("prefix"),
		group:        c.String("group"),
		topics:       splitList(c.StringSlice("topics")),
		workerGroups: splitList(c.StringSlice("worker-groups")),
	}
	out := c.App.Writer
	asJSON := c.Bool("json")
	once := func(ctx context.Context) (statusReport, error) {
		ctx, cancel := context.WithTimeout(ctx, c.Duration("timeout"))
		defer cancel()
		return collectStatus(ctx, src)
	}
	if !c.Bool("watch") {
		rep, err := once(context.Background())
		if err != nil {
			return cli.Exit(err.Error(), 1)
		}
		if asJSON {
			err = json.NewEncoder(out).Encode(rep)
		} else {
			err = printStatus(out, rep)
		}
		if err != nil {
			return cli.Exit(err.Error(), 1)
		}
		if len(rep.Errors) > 0 {
			return cli.Exit("incomplete: "+strings.Join(rep.Errors, "; "), 1)
		}
		return nil
	}
	ctx, stop := signalContext(log, nil)
	defer stop()
	clear := !asJSON && isTerminal(out)
	t := time.NewTicker(c.Duration("interval"))
	defer t.Stop()
	for {
		rep, err := once(ctx)
		if ctx.Err() != nil {
			return nil
		}
		switch {
		case err != nil:
			fmt.Fprintf(c.App.ErrWriter, "%s kbridge status: %v\n", time.Now().Format(time.TimeOnly), err)
		case asJSON:
			_ = json.NewEncoder(out).Encode(rep)
		default:
			if clear {
				fmt.Fprint(out, "\033[H\033[2J")
			}
			_ = printStatus(out, rep)
			if !clear {
				fmt.Fprintln(out)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// collectStatus reads one report. It fails only when neither Kafka nor
// Redis answers; a partial report lists what it missed in Errors.
func collectStatus(ctx context.Context, src statusSource) (statusReport, error) {
	rep := statusReport{Time: time.Now(), Group: src.group, Prefix: src.prefix}
	type key struct {
		topic string
		part  int
	}
	parts := map[key]bool{}
	wantTopic := func(t string) bool { return len(src.topics) == 0 || slices.Contains(src.topics, t) }

	members, rerr := src.rdb.SMembers(ctx, wire.RegistryKey(src.prefix)).Result()
	if rerr != nil {
		rep.Errors = append(rep.Errors, fmt.Sprintf("redis: %v", rerr))
	}
	for _, s := range members {
		prefix, topic, p, err := wire.ParseStreamKey(s)
		if err != nil || prefix != src.prefix || !wantTopic(topic) {
			continue
		}
		parts[key{topic, p}] = true
	}
	var kerr error
	if len(src.topics) > 0 {
		md, err := src.kafka.Metadata(ctx, &kafka.MetadataRequest{Topics: src.topics})
		if err != nil {
			kerr = err
		} else {
			for _, t := range md.Topics {
				if t.Error != nil {
					rep.Errors = append(rep.Errors, fmt.Sprintf("kafka: topic %s: %v", t.Name, t.Error))
					continue
				}
				for _, p := range t.Partitions {
					parts[key{t.Name, p.ID}] = true
				}
			}
		}
	}
	keys := make([]key, 0, len(parts))
	for k := range parts {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return keys[i].topic < keys[j].topic || keys[i].topic == keys[j].topic && keys[i].part < keys[j].part
	})
	byTopic := map[string][]int{}
	for _, k := range keys {
		byTopic[k.topic] = append(byTopic[k.topic], k.part)
		rep.Partitions = append(rep.Partitions, partitionView{
			Topic: k.topic, Partition: k.part, Stream: wire.StreamKey(src.prefix, k.topic, k.part),
			LogEnd: -1, Committed: -1, KafkaLag: -1, Top: -1, Backlog: -1, Pending: -1, DeadLetters: -1, Length: -1,
		})
	}

	// Kafka: log ends and the group's commits.
	logEnd, committed := map[key]int64{}, map[key]int64{}
	if kerr == nil && len(byTopic) > 0 {
		reqs := map[string][]kafka.OffsetRequest{}
		for t, ps := range byTopic {
			for _, p := range ps {
				reqs[t] = append(reqs[t], kafka.LastOffsetOf(p))
			}
		}
		lo, err := src.kafka.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: reqs})
		if err != nil {
			kerr = err
		} else {
			for t, ps := range lo.Topics {
				for _, p := range ps {
					if p.Error == nil {
						logEnd[key{t, p.Partition}] = p.LastOffset
					}
				}
			}
			of, err := src.kafka.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: src.group, Topics: byTopic})
			switch {
			case err != nil:
				kerr = err
			case of.Error != nil:
				kerr = of.Error
			default:
				for t, ps := range of.Topics {
					for _, p := range ps {
						if p.Error == nil {
							committed[key{t, p.Partition}] = p.CommittedOffset
						}
					}
				}
			}
		}
	}
	if kerr != nil {
		rep.Errors = append(rep.Errors, fmt.Sprintf("kafka: %v", kerr))
	}
	if rerr != nil && kerr != nil {
		return rep, fmt.Errorf("neither Kafka nor Redis answered: %s", strings.Join(rep.Errors, "; "))
	}

	// Redis: one atomic snapshot per stream, pipelined.
	var cmds []*redis.Cmd
	if rerr == nil && len(rep.Partitions) > 0 {
		pipe := src.rdb.Pipeline()
		for _, p := range rep.Partitions {
			cmds = append(cmds, statusScript.Eval(ctx, pipe, []string{p.Stream, wire.StatusKey(p.Stream), wire.DLQKey(p.Stream)}))
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			rerr = err
			rep.Errors = append(rep.Errors, fmt.Sprintf("redis: %v", err))
			cmds = nil
		}
	}
	now := time.Now()
	for i := range rep.Partitions {
		p := &rep.Partitions[i]
		k := key{p.Topic, p.Partition}
		if v, ok := logEnd[k]; ok {
			p.LogEnd = v
		}
		if v, ok := committed[k]; ok {
			p.Committed = v
		}
		if p.LogEnd >= 0 && p.Committed >= 0 {
			p.KafkaLag = max(p.LogEnd-p.Committed, 0)
			rep.Totals.KafkaLag += p.KafkaLag
		}
		if cmds == nil {
			continue
		}
		v, err := cmds[i].Slice()
		if err != nil {
			rep.Errors = append(rep.Errors, fmt.Sprintf("redis: %s: %v", p.Stream, err))
			continue
		}
		if err := p.parseRedis(v, src.workerGroups, now); err != nil {
			rep.Errors = append(rep.Errors, fmt.Sprintf("redis: %s: %v", p.Stream, err))
			continue
		}
		rep.Totals.Backlog += max(p.Backlog, 0)
		rep.Totals.Pending += max(p.Pending, 0)
		rep.Totals.DeadLetters += max(p.DeadLetters, 0)
		if p.Ingest != nil && p.Ingest.Paused {
			rep.Totals.Paused++
		}
	}
	if rep.Partitions == nil {
		rep.Partitions = []partitionView{}
	}
	return rep, nil
}

// statusScript reads, in one atomic step, a stream's top and length, and
// per worker group its last-delivered-id, pending count, lowest pending
// entry (with its consumer, idle time, deliveries and record timestamp) and
// first undelivered entry; plus the ingest's status hash and the length of
// the dead-letter stream. XINFO GROUPS lag/entries-read are not used: they
// are NULL or stale in several cases.
//
// KEYS: stream, status hash, dead-letter stream (one hash tag: one slot).
// Returns {exists, last-generated-id, length, groups, hash, dlq length} with
// groups = {{name, last-delivered, pending, low-id, consumer, idle, deliveries, next-id, timestamp}, ...}.
var statusScript = redis.NewScript(`
local out = {0, '', 0, {}, {}, 0}
local ok, info = pcall(redis.call, 'XINFO', 'STREAM', KEYS[1])
if ok then
  out[1] = 1
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then out[2] = info[i+1]
    elseif info[i] == 'length' then out[3] = info[i+1] end
  end
  local groups = {}
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local name, last = '', '0-0'
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i+1] elseif g[i] == 'last-delivered-id' then last = g[i+1] end
    end
    local count = redis.call('XPENDING', KEYS[1], name)[1]
    local low, ts = {'', '', 0, 0}, ''
    if count > 0 then
      low = redis.call('XPENDING', KEYS[1], name, '-', '+', 1)[1]
      local e = redis.call('XRANGE', KEYS[1], low[1], low[1])
      if #e > 0 then
        local f = e[1][2]
        for i = 1, #f, 2 do if f[i] == 'timestamp' then ts = f[i+1] end end
      end
    end
    local nxt = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 1)
    local nid = ''
    if #nxt > 0 then nid = nxt[1][1] end
    table.insert(groups, {name, last, count, low[1], low[2], low[3], low[4], nid, ts})
  end
  out[4] = groups
end
out[5] = redis.call('HGETALL', KEYS[2])
local dok, dlen = pcall(redis.call, 'XLEN', KEYS[3])
if dok then out[6] = dlen end
return out
`)

// parseRedis fills p from a statusScript reply.
func (p *partitionView) parseRedis(v []any, onlyGroups []string, now time.Time) error {
	if len(v) != 6 {
		return fmt.Errorf("unexpected status script reply %v", v)
	}
	p.DeadLetters, _ = v[5].(int64)
	if h, _ := v[4].([]any); len(h) > 0 {
		m := map[string]string{}
		for i := 0; i+1 < len(h); i += 2 {
			m[fmt.Sprint(h[i])] = fmt.Sprint(h[i+1])
		}
		st := bridge.ParseStatus(m)
		p.Ingest = &ingestStatus{Paused: st.Paused, Stalled: st.Stalled, Owner: st.Owner, Updated: st.Updated, Committed: st.Committed, Backlog: st.Backlog}
	}
	p.Pending, p.Backlog = 0, 0
	if n, _ := v[0].(int64); n == 0 {
		p.Length = 0
		p.Groups = []groupView{}
		return nil
	}
	p.StreamExists = true
	p.Top = -1
	if id, _ := v[1].(string); id != "" {
		top, err := wire.Through(id)
		if err != nil {
			return err
		}
		p.Top = top
	}
	p.Length, _ = v[2].(int64)
	groups, _ := v[3].([]any)
	p.Groups = []groupView{}
	for _, gv := range groups {
		f, _ := gv.([]any)
		if len(f) != 9 {
			return fmt.Errorf("unexpected group reply %v", gv)
		}
		g := groupView{Name: fmt.Sprint(f[0]), LastDelivered: fmt.Sprint(f[1])}
		if len(onlyGroups) > 0 && !slices.Contains(onlyGroups, g.Name) {
			continue
		}
		g.Pending, _ = f[2].(int64)
		// The group's lowest un-acknowledged offset: its lowest pending
		// entry, else the first entry it was not delivered yet.
		low := p.Top + 1
		if id, _ := f[3].(string); id != "" {
			off, err := wire.ParseID(id)
			if err != nil {
				return err
			}
			low = min(low, off)
			idle, _ := f[5].(int64)
			deliv, _ := f[6].(int64)
			if p.Oldest == nil || off < p.Oldest.Offset {
				p.Oldest = &oldestView{Offset: off, Group: g.Name, Consumer: fmt.Sprint(f[4]), IdleMs: idle, Deliveries: deliv}
				if ts, err := strconv.ParseInt(fmt.Sprint(f[8]), 10, 64); err == nil && ts > 0 {
					p.Oldest.RecordAgeMs = max(now.UnixMilli()-ts, 0)
				}
			}
		}
		if id, _ := f[7].(string); id != "" {
			off, err := wire.ParseID(id)
			if err != nil {
				return err
			}
			low = min(low, off)
		}
		g.Backlog = max(p.Top+1-low, 0)
		p.Backlog = max(p.Backlog, g.Backlog)
		p.Pending += g.Pending
		p.Groups = append(p.Groups, g)
	}
	return nil
}

// printStatus writes rep as a table.
func printStatus(w io.Writer, rep statusReport) error {
	fmt.Fprintf(w, "kbridge status  %s  group=%s prefix=%s\n", rep.Time.Format(time.DateTime), rep.Group, rep.Prefix)
	if len(rep.Partitions) == 0 {
		fmt.Fprintf(w, "no partitions: no stream registered under %s (is the ingest started with --prefix %s?); give --topics to see Kafka alone\n",
			wire.RegistryKey(rep.Prefix), rep.Prefix)
	} else {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "TOPIC\tPART\tLOG-END\tCOMMITTED\tLAG\tTOP\tLEN\tBACKLOG\tPENDING\tOLDEST\tIDLE\tCONSUMER\tPAUSED\tDLQ\tOWNER\t")
		for _, p := range rep.Partitions {
			oldest, idle, consumer := "-", "-", "-"
			if o := p.Oldest; o != nil {
				oldest = fmt.Sprintf("%d (%dx)", o.Offset, o.Deliveries)
				idle = fmtDuration(time.Duration(o.IdleMs) * time.Millisecond)
				consumer = o.Consumer
				if len(o.Group) > 0 && len(p.Groups) > 1 {
					consumer = o.Group + "/" + o.Consumer
				}
			}
			paused, owner := "-", "(no ingest status)"
			if s := p.Ingest; s != nil {
				paused = map[bool]string{true: "yes", false: "no"}[s.Paused]
				if s.Stalled != "" {
					paused = "STALLED"
				}
				owner = fmt.Sprintf("%s (%s ago)", s.Owner, fmtDuration(rep.Time.Sub(s.Updated)))
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n",
				p.Topic, p.Partition, num(p.LogEnd), num(p.Committed), num(p.KafkaLag), num(p.Top), num(p.Length),
				num(p.Backlog), num(p.Pending), oldest, idle, consumer, paused, num(p.DeadLetters), owner)
		}
		t := rep.Totals
		fmt.Fprintf(tw, "total\t%d\t\t\t%d\t\t\t%d\t%d\t\t\t\t%d paused\t%d\t\t\n", len(rep.Partitions), t.KafkaLag, t.Backlog, t.Pending, t.Paused, t.DeadLetters)
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	for _, p := range rep.Partitions {
		if p.Ingest != nil && p.Ingest.Stalled != "" {
			fmt.Fprintf(w, "STALLED %s/%d: %s\n", p.Topic, p.Partition, p.Ingest.Stalled)
		}
	}
	for _, e := range rep.Errors {
		fmt.Fprintf(w, "warning: %s\n", e)
	}
	return nil
}

func num(n int64) string {
	if n < 0 {
		return "-"
	}
	return strconv.FormatInt(n, 10)
}

func fmtDuration(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < 10*time.Second:
		return d.Round(100 * time.Millisecond).String()
	case d < time.Hour:
		return d.Round(time.Second).String()
	}
	return d.Round(time.Minute).String()
}
