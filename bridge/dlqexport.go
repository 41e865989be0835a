package bridge

// Durable dead letters (docs/wire.md, "Durability of dead letters").
//
// A worker that gives up on an entry XADDs a dead letter to <stream>:dlq and
// XACKs the entry, both in one script: from then on the dead letter is the
// only copy of the record in Redis, and the commit would pass the record.
// Redis may lose it (a restart without persistence). So the ingest copies
// each dead letter of the partitions it owns to a Kafka topic, and a
// partition's commit does not pass a dead letter until Kafka has it:
//
//   - Every dead-letter stream has a consumer group of the ingest,
//     wire.DLQExportGroup. The exporter (one goroutine per Ingest) reads new
//     dead letters in it, produces them to Kafka (acks=all), and XACKs them
//     in that group only once Kafka acknowledged them. An entry pending in
//     the group, or not yet delivered to it, is "not exported".
//   - Before a partition offers a frontier for commit, dlqBoundScript reads
//     the lowest record offset among the dead letters not exported, and the
//     offer is clamped below it. The script runs after the observation the
//     frontier came from, so every dead letter of an entry the observation
//     saw acknowledged already exists (the worker writes it before, or
//     atomically with, the XACK); it also checks that the stream is still the
//     one observed (not lost in between), else nothing is offered.
//   - After Redis lost everything, the commit never passed an un-exported
//     dead letter, so its record is fetched again and dead-lettered again:
//     nothing is lost. A dead letter exported twice (an ingest that died
//     between Kafka's acknowledgement and the XACK) has the same
//     kbridge.dlq.ref header: kafka-go has no idempotent producer.
//   - Entries pending in the export group that another reader left (a
//     zombie ingest, a program's XREADGROUP) are read again: the bound read
//     counts them, and the exporter then reads the group's pending entries
//     (XAUTOCLAIM to its consumer, XREADGROUP 0) before the new ones.
//
// The message's timestamp is the export time (the worker's dlq_time travels
// as a header): Kafka refuses a timestamp too far ahead, and its retention
// deletes one too far behind at once.
//
// Junk that another program writes into a dead-letter stream never blocks a
// commit: it is exported as it is (wire.EncodeDLQMessage never fails). A
// dead letter over --dlq-max-bytes is exported as a stub (its coordinates,
// dead-letter fields and why, not the record: wire.StubDLQMessage), recorded
// in <stream>:dlq:stubs with the XACK, logged and counted: the record can be
// read again from its source topic, and "kbridge dlq" says Kafka has a stub
// only. Anything Kafka refuses (a broker error, whatever it says about the
// message) holds the commit, retried with backoff: the status hash, the
// stats, the log say so.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"

	"github.com/kbridge/kbridge/internal/wire"
)

// Fields of the partition status hash written by the dead-letter export.
const (
	// StatusDLQUnexported is the number of dead letters of the partition
	// not yet in Kafka: those pending in the export group plus those after
	// its last-delivered-id, each counted up to dlqScanLimit (so at most
	// 2 × dlqScanLimit).
	StatusDLQUnexported = "dlq_unexported"
	// StatusDLQHeldAt is where the commit waits for those dead letters:
	// the lowest record offset among them, or the committed offset when
	// that is higher (a dead letter of a replayed record) or when more than
	// dlqScanLimit wait (-1: not held).
	StatusDLQHeldAt = "dlq_commit_held_at"
	// StatusDLQExportError is why the last export of the partition's dead
	// letters failed ("" after a success).
	StatusDLQExportError = "dlq_export_error"
)

const (
	// dlqScanLimit bounds the dead letters dlqBoundScript examines (it
	// reads them whole, values included, inside Redis); with more not
	// exported, the partition commits nothing until the exporter has caught
	// up. Normally a dead letter is exported within a round trip to Kafka,
	// so only an export that fails for a while gets there.
	dlqScanLimit = 100
	// dlqReadCount is the most dead letters read per partition per round.
	dlqReadCount = 200
)

// dlqLuaGroups defines streamgroups(key): XINFO GROUPS of key, or nil when
// the key is missing or not a stream (another program's key of another
// type holds no dead letter and must not stop the commit). TYPE is not
// used: it is not in the documented ACL rule (docs/operations.md).
const dlqLuaGroups = `
local function streamgroups(key)
  if redis.call('EXISTS', key) == 0 then return nil end
  local ok, g = pcall(redis.call, 'XINFO', 'GROUPS', key)
  if ok then return g end
  local msg = g
  if type(g) == 'table' then msg = g.err end
  if string.find(tostring(msg), 'WRONGTYPE', 1, true) then return nil end
  error(g)
end
`

// dlqBoundScript reads, after an observation of the stream whose top was
// ARGV[2], the dead letters not yet exported: those pending in the export
// group and those after its last-delivered-id. It creates the export group
// at 0 when the dead-letter stream exists without it, and writes the counts
// into the status hash when that exists. Offsets are compared as decimal
// strings: Lua's numbers are doubles, exact only up to 2^53.
//
// KEYS[1] stream, KEYS[2] dead-letter stream, KEYS[3] status hash; ARGV[1]
// export group, ARGV[2] observed top, ARGV[3] scan limit, ARGV[4] the offset
// the caller would commit, ARGV[5] the committed offset (-1: none). Returns
// {status, lowest offset (-1: none), count, pending}: status 0 the stream is
// gone or below the observed top (commit nothing), 1 complete, 2 more than
// the limit not exported (commit nothing); pending is how many of them are
// pending in the export group (read by someone, not acknowledged).
var dlqBoundScript = redis.NewScript(luaTop + dlqLuaGroups + `
local top = streaminfo(KEYS[1])
if top == nil or top < tonumber(ARGV[2]) then return {0, -1, 0, 0} end
-- a - b for decimal strings without sign or leading zeros: <0, 0, >0
local function cmp(a, b)
  if #a ~= #b then return #a - #b end
  if a == b then return 0 end
  if a < b then return -1 end
  return 1
end
local function offset(s)
  if type(s) ~= 'string' or not string.match(s, '^%d+$') then return nil end
  s = string.gsub(s, '^0+', '')
  if s == '' then s = '0' end
  if cmp(s, '9223372036854775807') > 0 then return nil end
  return s
end
local status, low, n, npend = 1, nil, 0, 0
local function consider(f)
  n = n + 1
  for i = 1, #f, 2 do
    if f[i] == 'offset' then
      -- another program's junk without a usable offset bounds nothing: it is
      -- exported as it is, and holding the commit for it would gain nothing
      local o = offset(f[i+1])
      if o ~= nil and (low == nil or cmp(o, low) < 0) then low = o end
      return
    end
  end
end
local groups = streamgroups(KEYS[2])
if groups ~= nil then
  local last = nil
  for _, g in ipairs(groups) do
    local name, l
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i+1] elseif g[i] == 'last-delivered-id' then l = g[i+1] end
    end
    if name == ARGV[1] then last = l end
  end
  if last == nil then
    redis.call('XGROUP', 'CREATE', KEYS[2], ARGV[1], '0')
    last = '0-0'
  end
  local limit = tonumber(ARGV[3])
  local pend = redis.call('XPENDING', KEYS[2], ARGV[1], '-', '+', limit)
  npend = #pend
  for _, p in ipairs(pend) do
    local e = redis.call('XRANGE', KEYS[2], p[1], p[1])
    if #e > 0 then consider(e[1][2]) end
  end
  local rest = redis.call('XRANGE', KEYS[2], '(' .. last, '+', 'COUNT', limit)
  for _, e in ipairs(rest) do consider(e[2]) end
  if #pend >= limit or #rest >= limit then status = 2 end
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  local want, committed = offset(ARGV[4]), offset(ARGV[5])
  local held = nil
  if status == 2 then held = committed or '0' end
  if low ~= nil and want ~= nil and cmp(low, want) < 0 then held = low end
  -- the commit never goes back: below the committed offset, it waits there
  if held ~= nil and committed ~= nil and cmp(held, committed) < 0 then held = committed end
  -- informational: a status key of another type is left alone
  pcall(redis.call, 'HSET', KEYS[3], 'dlq_unexported', n, 'dlq_commit_held_at', held or '-1')
end
return {status, low or '-1', n, npend}
`)

// dlqReadScript reads dead letters in the export group: the ones pending in
// it (ARGV[4] = '0': read before and not exported, claimed first by the
// consumer ARGV[2]) or new ones ('>'). It
// creates the group at 0 when the dead-letter stream exists without it; a
// missing stream has nothing to read.
//
// KEYS[1] dead-letter stream; ARGV[1] group, ARGV[2] consumer, ARGV[3]
// count, ARGV[4] '0' or '>'. Returns the entries as XREADGROUP does (a
// pending entry deleted since has no fields).
var dlqReadScript = redis.NewScript(dlqLuaGroups + `
local groups = streamgroups(KEYS[1])
if groups == nil then return {} end
local found = false
for _, g in ipairs(groups) do
  for i = 1, #g, 2 do
    if g[i] == 'name' and g[i+1] == ARGV[1] then found = true end
  end
end
if not found then redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0') end
if ARGV[4] == '0' then
  -- every pending entry becomes ours, whoever read it (a consumer name
  -- another program used in the group must not hold the commit for ever)
  local cursor = '0-0'
  repeat
    local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, cursor, 'COUNT', ARGV[3], 'JUSTID')
    cursor = r[1]
  until cursor == '0-0'
end
local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[1], ARGV[4])
if not r then return {} end
return r[1][2]
`)

// dlqStatusScript sets fields of a status hash if it exists (the ingest's
// status publication gives it its TTL; a hash created here would have none).
var dlqStatusScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if pcall(redis.call, 'HSET', KEYS[1], unpack(ARGV)) then return 1 end
return 0
`)

// dlqStubAckScript acknowledges dead letters Kafka has as stubs only: for
// each, it records why in the stubs hash, then XACKs it in the export group,
// together, so that no reader ever sees one acknowledged and not recorded.
//
// KEYS[1] dead-letter stream, KEYS[2] its stubs hash (wire.DLQStubsKey);
// ARGV[1] export group, then pairs of entry ID and why.
var dlqStubAckScript = redis.NewScript(`
local n = 0
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i+1])
  n = n + redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
end
return n
`)

// DLQStats counts what the dead-letter export did since the Ingest started.
type DLQStats struct {
	// Exported dead letters (Kafka acknowledged them).
	Exported int64
	// Skipped dead letters: over DLQMaxBytes, exported as stubs (their
	// coordinates and why, not the record), recorded in <stream>:dlq:stubs.
	// Redis holds the record's only copy outside its source topic. Each is
	// logged at error level.
	Skipped int64
	// Errors: failed export attempts (each retried with backoff; the
	// partition's commit waits).
	Errors int64
	// Unexported sums, over the assigned partitions, the dead letters not
	// yet in Kafka at the last look; HeldPartitions counts the partitions
	// whose commit one of them holds back.
	Unexported     int64
	HeldPartitions int
}

// DLQStats returns the dead-letter export's counters; all zero when the
// export is off. Safe for concurrent use.
func (in *Ingest) DLQStats() DLQStats {
	x := in.dlq
	if x == nil {
		return DLQStats{}
	}
	st := DLQStats{Exported: x.exported.Load(), Skipped: x.skipped.Load(), Errors: x.errs.Load()}
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, dp := range x.parts {
		st.Unexported += dp.unexported
		if dp.held {
			st.HeldPartitions++
		}
	}
	return st
}

// dlqExporter copies the dead letters of the partitions the Ingest owns to
// Kafka. One goroutine (run) does the exports; partitions register
// themselves and read their bound (offer) on their own goroutines.
type dlqExporter struct {
	in     *Ingest
	log    *slog.Logger
	writer *kafka.Writer
	// write produces msgs (one dead-letter topic); a seam for tests.
	write func(ctx context.Context, msgs ...kafka.Message) error

	kick chan struct{}

	mu    sync.Mutex
	parts map[string]*dlqPart // by partition stream key

	// Owned by run: per dead-letter topic, the partitions (stream keys)
	// whose last export failed, since when it fails and when that was
	// last logged.
	failingParts           map[string]map[string]bool
	failingSince, loggedAt map[string]time.Time
	// Owned by run: dead-letter topics whose configuration was looked at.
	checked map[string]bool

	exported, skipped, errs atomic.Int64
}

// dlqPart is the export state of one assigned partition.
type dlqPart struct {
	owner    *partition // the registration; a later generation's replaces it
	t        tp
	stream   string
	dlq      string
	topic    string // the Kafka dead-letter topic
	due      time.Time
	backoff  time.Duration
	pending  bool // read the group's pending entries first (XREADGROUP 0)
	failing  string
	reported string // last error written to the status hash

	unexported int64 // from the last bound read
	held       bool
}

func newDLQExporter(in *Ingest) *dlqExporter {
	cfg := in.cfg
	if cfg.DisableDLQExport {
		return nil
	}
	x := &dlqExporter{
		in: in, log: in.log.With("component", "dlq-export"),
		kick:         make(chan struct{}, 1),
		parts:        map[string]*dlqPart{},
		failingParts: map[string]map[string]bool{},
		failingSince: map[string]time.Time{}, loggedAt: map[string]time.Time{},
		checked: map[string]bool{},
		writer: &kafka.Writer{
			Addr:         kafka.TCP(cfg.Brokers...),
			Transport:    in.client.Transport,
			Balancer:     dlqBalancer{},
			RequiredAcks: kafka.RequireAll,
			MaxAttempts:  3,
			BatchSize:    dlqReadCount,
			BatchBytes:   int64(cfg.DLQMaxBytes),
			BatchTimeout: time.Millisecond,
			WriteTimeout: 10 * time.Second,
			ReadTimeout:  10 * time.Second,
			// Created with the source topic's partition count instead
			// (ensureTopic): the broker's auto-creation would give one.
			AllowAutoTopicCreation: false,
		},
	}
	x.write = x.writer.WriteMessages
	return x
}

// start runs the exporter until ctx is done; the returned function waits for
// it to stop and closes the writer. A nil exporter (export off) does nothing.
func (x *dlqExporter) start(ctx context.Context) (stop func()) {
	if x == nil {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		x.run(ctx)
	}()
	return func() {
		<-done
		_ = x.writer.Close()
	}
}

// register makes the exporter look after p's dead letters (at once: a
// previous owner may have left some not exported).
func (x *dlqExporter) register(p *partition) {
	if x == nil {
		return
	}
	x.mu.Lock()
	x.parts[p.stream.key] = &dlqPart{
		owner: p, t: p.t, stream: p.stream.key, dlq: wire.DLQKey(p.stream.key),
		topic: wire.DLQTopic(x.in.cfg.DLQTopic, p.t.topic), pending: true,
	}
	x.mu.Unlock()
	x.wake()
}

// unregister stops looking after p's dead letters (revoked).
func (x *dlqExporter) unregister(p *partition) {
	if x == nil {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if dp, ok := x.parts[p.stream.key]; ok && dp.owner == p {
		delete(x.parts, p.stream.key)
	}
}

func (x *dlqExporter) wake() {
	select {
	case x.kick <- struct{}{}:
	default:
	}
}

// offerCommit offers off, the frontier of an observation whose stream top was
// top, for commit — clamped, when the export is on, below the lowest dead
// letter not yet in Kafka, but never below the committed offset (invariant 3:
// commits never go backwards; nothing is offered then). It must run after
// that observation.
func (p *partition) offerCommit(ctx context.Context, top, off int64) {
	x := p.in.dlq
	if x == nil {
		p.c.offer(p.t, off)
		return
	}
	committed := int64(-1)
	if c, ok := p.c.committed(p.t); ok {
		committed = c
	}
	v, err := dlqBoundScript.Run(ctx, p.stream.rdb,
		[]string{p.stream.key, wire.DLQKey(p.stream.key), wire.StatusKey(p.stream.key)},
		wire.DLQExportGroup, top, dlqScanLimit, off, committed).Int64Slice()
	if err == nil && len(v) != 4 {
		err = fmt.Errorf("unexpected reply %v", v)
	}
	if err != nil {
		if ctx.Err() == nil {
			p.in.counters.redisErrs.Add(1)
			p.log.Warn("reading the dead letters not yet in Kafka failed; not committing", "err", err)
		}
		return
	}
	status, low, n, npend := v[0], v[1], v[2], v[3]
	held := status == 2 || (status == 1 && low >= 0 && low < off)
	x.note(p, n, npend, held, low, off)
	switch status {
	case 0:
		return // the stream changed since the observation: the next one decides
	case 2:
		return // too many not exported to know the lowest: wait for the exporter
	}
	if low >= 0 && low < off {
		// Never below what is committed: a dead letter of a record below
		// the commit (replayed, restored) holds the commit, not lowers it.
		off = max(low, p.tr.Committed())
	}
	if off <= p.tr.Committed() {
		return
	}
	p.c.offer(p.t, off)
}

// note records what a partition's bound read found, logs changes of the
// held state, and wakes the exporter when there is something to export.
// Entries pending in the export group (npend) are read again, whoever read
// them: another reader that left them (a zombie ingest, a program's
// XREADGROUP) would otherwise hold the commit for ever.
func (x *dlqExporter) note(p *partition, n, npend int64, held bool, low, want int64) {
	x.mu.Lock()
	dp, ok := x.parts[p.stream.key]
	if !ok || dp.owner != p {
		x.mu.Unlock()
		return
	}
	was := dp.held
	dp.unexported, dp.held = n, held
	if npend > 0 {
		dp.pending = true
	}
	if n > 0 && dp.backoff == 0 {
		dp.due = time.Time{}
	}
	x.mu.Unlock()
	switch {
	case held && !was:
		p.log.Warn("commit held: dead letters not yet exported to Kafka", "unexported", n,
			"held_at", low, "frontier", want, "dlq_topic", wire.DLQTopic(x.in.cfg.DLQTopic, p.t.topic))
	case !held && was:
		p.log.Info("commit released: the dead letters below the frontier are in Kafka", "frontier", want)
	}
	if n > 0 {
		x.wake()
	}
}

// run exports until ctx is done: every partition due (registered, kicked by
// its bound read, a retry after its backoff, or its periodic scan).
func (x *dlqExporter) run(ctx context.Context) {
	tick := time.NewTicker(min(x.in.cfg.CommitInterval, 200*time.Millisecond))
	defer tick.Stop()
	for {
		x.round(ctx)
		select {
		case <-ctx.Done():
			return
		case <-x.kick:
		case <-tick.C:
		}
	}
}

// dlqRead is the outcome of reading one partition's dead-letter stream.
type dlqRead struct {
	dp          *dlqPart
	fromPending bool // read the group's pending entries (XREADGROUP 0)
	entries     []redis.XMessage
	deleted     []string // pending entries deleted since (replayed, deleted): nothing to export
	err         error
	full        bool // a whole batch: read again at once
}

// due returns the reads to do now: the partitions due, and for each
// whether to read its pending entries (dp.pending, read under the lock:
// note sets it on the partitions' goroutines).
func (x *dlqExporter) due(now time.Time) []dlqRead {
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []dlqRead
	for _, dp := range x.parts {
		if !dp.due.After(now) {
			out = append(out, dlqRead{dp: dp, fromPending: dp.pending})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].dp.stream < out[j].dp.stream })
	return out
}

// round reads the due partitions' dead letters, produces them to Kafka (one
// call per dead-letter topic) and acknowledges in the export group what
// Kafka acknowledged.
func (x *dlqExporter) round(ctx context.Context) {
	now := time.Now()
	reads := x.due(now)
	if len(reads) == 0 || ctx.Err() != nil {
		return
	}
	x.read(ctx, reads)
	byTopic := map[string][]int{} // dead-letter topic -> indexes into msgs
	var msgs []kafka.Message
	var refs []dlqRef
	for i := range reads {
		r := &reads[i]
		if r.err != nil {
			continue
		}
		for _, e := range r.entries {
			m := wire.EncodeDLQMessage(r.dp.t.topic, r.dp.t.partition, e.ID, e.Values, now)
			byTopic[r.dp.topic] = append(byTopic[r.dp.topic], len(msgs))
			msgs = append(msgs, kafkaMessage(r.dp.topic, m))
			refs = append(refs, dlqRef{read: i, id: e.ID})
		}
	}
	results := make([]error, len(msgs))
	stubs := make([]string, len(msgs)) // why a message is a stub ("": in full)
	topics := make([]string, 0, len(byTopic))
	for t := range byTopic {
		topics = append(topics, t)
	}
	sort.Strings(topics)
	for _, t := range topics {
		x.checkTopic(ctx, t)
		x.produce(ctx, t, msgs, byTopic[t], results, stubs)
	}
	// Acknowledge, per partition, what Kafka has (stubs recorded as such),
	// and the pending entries deleted since they were read.
	acks := map[int][]string{}
	stubAcks := map[int][]string{} // pairs of ID and why
	failed := map[int]error{}
	for j, ref := range refs {
		switch {
		case results[j] != nil:
			if failed[ref.read] == nil {
				failed[ref.read] = results[j]
			}
		case stubs[j] != "":
			stubAcks[ref.read] = append(stubAcks[ref.read], ref.id, stubs[j])
		default:
			acks[ref.read] = append(acks[ref.read], ref.id)
			x.exported.Add(1)
		}
	}
	for i := range reads {
		acks[i] = append(acks[i], reads[i].deleted...)
	}
	ackErr := x.ack(ctx, reads, acks)
	for i, pairs := range stubAcks {
		dp := reads[i].dp
		err := dlqStubAckScript.Run(ctx, x.in.cfg.Redis, []string{dp.dlq, wire.DLQStubsKey(dp.stream)},
			append([]any{wire.DLQExportGroup}, toAny(pairs)...)...).Err()
		if err != nil {
			if ackErr[i] == nil {
				ackErr[i] = fmt.Errorf("record the stubs in %s and XACK them: %w", wire.DLQStubsKey(dp.stream), err)
			}
			continue
		}
		for k := 0; k < len(pairs); k += 2 {
			x.skipped.Add(1)
			x.log.Error("DEAD LETTER EXPORTED AS A STUB: over --dlq-max-bytes, Kafka has its coordinates and dead-letter fields, not the record; the commit moves past it: read the record again from its source topic, or copy it out of Redis (kbridge dlq show)",
				"topic", dp.t.topic, "partition", dp.t.partition, "stream", dp.dlq, "id", pairs[k],
				"dlq_topic", dp.topic, "max_bytes", x.in.cfg.DLQMaxBytes, "why", pairs[k+1])
		}
	}
	errs := make([]error, len(reads))
	for i := range reads {
		r := &reads[i]
		errs[i] = r.err
		if errs[i] == nil {
			errs[i] = failed[i]
		}
		if errs[i] == nil {
			errs[i] = ackErr[i]
		}
		x.settle(ctx, r, errs[i], now)
	}
	x.logRound(ctx, reads, errs)
}

// kafkaMessage is m as a kafka-go message to topic.
func kafkaMessage(topic string, m wire.DLQMessage) kafka.Message {
	km := kafka.Message{Topic: topic, Key: m.Key, Value: m.Value, Time: m.Time}
	for _, h := range m.Headers {
		km.Headers = append(km.Headers, kafka.Header{Key: h.Key, Value: h.Value})
	}
	return km
}

// dlqMessage is the inverse of kafkaMessage.
func dlqMessage(km kafka.Message) wire.DLQMessage {
	m := wire.DLQMessage{Key: km.Key, Value: km.Value, Time: km.Time}
	for _, h := range km.Headers {
		m.Headers = append(m.Headers, wire.Header{Key: h.Key, Value: h.Value})
	}
	return m
}

func toAny(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

type dlqRef struct {
	read int
	id   string
}

// read runs dlqReadScript for each read, pipelined, and fills them in.
func (x *dlqExporter) read(ctx context.Context, reads []dlqRead) {
	rdb := x.in.cfg.Redis
	run := func() []*redis.Cmd {
		pipe := rdb.Pipeline()
		cmds := make([]*redis.Cmd, len(reads))
		for i, r := range reads {
			start := ">"
			if r.fromPending {
				start = "0"
			}
			cmds[i] = dlqReadScript.EvalSha(ctx, pipe, []string{r.dp.dlq}, wire.DLQExportGroup, wire.DLQExportConsumer, dlqReadCount, start)
		}
		_, _ = pipe.Exec(ctx) // errors are per command
		return cmds
	}
	cmds := run()
	for _, c := range cmds {
		if isScriptMiss(c.Err()) {
			if err := dlqReadScript.Load(ctx, rdb).Err(); err == nil {
				cmds = run()
			}
			break
		}
	}
	for i, c := range cmds {
		r := &reads[i]
		v, err := c.Slice()
		if err != nil {
			r.err = fmt.Errorf("read %s: %w", r.dp.dlq, err)
			continue
		}
		r.full = len(v) >= dlqReadCount
		for _, e := range v {
			f, ok := e.([]any)
			if !ok || len(f) != 2 {
				r.err = fmt.Errorf("read %s: unexpected entry %v", r.dp.dlq, e)
				break
			}
			id, _ := f[0].(string)
			kv, _ := f[1].([]any)
			if kv == nil {
				r.deleted = append(r.deleted, id)
				continue
			}
			values := make(map[string]any, len(kv)/2)
			for k := 0; k+1 < len(kv); k += 2 {
				name, _ := kv[k].(string)
				values[name] = kv[k+1]
			}
			r.entries = append(r.entries, redis.XMessage{ID: id, Values: values})
		}
	}
}

// produce writes the messages idx of msgs, all to dead-letter topic topic,
// and sets each one's result. A message over --dlq-max-bytes (kafka-go's
// own check, before anything is sent) is replaced by its stub first, and
// stubs[i] says why. Whatever the broker refuses is an error: the
// partition's commit waits for it, retried with backoff.
func (x *dlqExporter) produce(ctx context.Context, topic string, msgs []kafka.Message, idx []int, results []error, stubs []string) {
	batch := make([]kafka.Message, len(idx))
	for k, i := range idx {
		m := dlqMessage(msgs[i])
		if size := wire.DLQMessageSize(m); size > x.in.cfg.DLQMaxBytes {
			stub := wire.StubDLQMessage(m, size, x.in.cfg.DLQMaxBytes)
			msgs[i] = kafkaMessage(topic, stub)
			stubs[i] = string(stub.Headers[len(stub.Headers)-1].Value)
		}
		batch[k] = msgs[i]
	}
	err := x.write(ctx, batch...)
	if err == nil {
		return
	}
	var werrs kafka.WriteErrors
	if errors.As(err, &werrs) && len(werrs) == len(idx) {
		for k, i := range idx {
			if werrs[k] != nil {
				results[i] = fmt.Errorf("produce to %s: %w", topic, werrs[k])
			}
		}
		return
	}
	if errors.Is(err, kafka.UnknownTopicOrPartition) {
		if cerr := x.ensureTopic(ctx, topic, msgs[idx[0]]); cerr != nil {
			err = fmt.Errorf("%w; creating it failed: %w", err, cerr)
		} else {
			err = errTopicCreated
		}
	}
	var tooLarge kafka.MessageTooLargeError
	if errors.As(err, &tooLarge) {
		err = fmt.Errorf("%w (a stub over --dlq-max-bytes %d: raise it)", err, x.in.cfg.DLQMaxBytes)
	}
	for _, i := range idx {
		results[i] = fmt.Errorf("produce to %s: %w", topic, err)
	}
}

// errTopicCreated fails an export to a dead-letter topic created just now:
// it is retried at once, and not counted as an error.
var errTopicCreated = errors.New("the dead-letter topic did not exist: created it")

// ensureTopic creates a dead-letter topic with as many partitions as the
// source topic of m (a source partition's dead letters then go to the
// partition of the same number) and its replication factor, and
// cleanup.policy=delete whatever the broker's default: compaction would
// keep only the last dead letter of each key, and refuses null keys.
func (x *dlqExporter) ensureTopic(ctx context.Context, topic string, m kafka.Message) error {
	src := headerValue(m.Headers, wire.HeaderDLQTopic)
	partitions, replication := -1, -1 // the broker's defaults
	md, err := x.in.client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{src}})
	if err == nil && len(md.Topics) == 1 && md.Topics[0].Error == nil && len(md.Topics[0].Partitions) > 0 {
		partitions = len(md.Topics[0].Partitions)
		replication = len(md.Topics[0].Partitions[0].Replicas)
	} else {
		x.log.Warn("cannot read the source topic's partitions and replication: creating the dead-letter topic with the broker's defaults",
			"dlq_topic", topic, "topic", src, "err", err)
	}
	res, err := x.in.client.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
		Topic: topic, NumPartitions: partitions, ReplicationFactor: replication,
		ConfigEntries: []kafka.ConfigEntry{{ConfigName: "cleanup.policy", ConfigValue: "delete"}},
	}}})
	if err != nil {
		return err
	}
	if err := res.Errors[topic]; err != nil && !errors.Is(err, kafka.TopicAlreadyExists) {
		return err
	}
	x.log.Info("created the dead-letter topic", "dlq_topic", topic, "partitions", partitions, "replication", replication,
		"cleanup_policy", "delete", "topic", src)
	delete(x.checked, topic) // look at what was made
	return nil
}

// checkTopic looks, once per run, at the configuration of a dead-letter
// topic and warns of what makes dead letters less durable than the commit
// assumes: compaction (the cleaner keeps only the last dead letter of each
// key; a dead letter with a null key is refused and holds the commit), and
// max.message.bytes below --dlq-max-bytes (a dead letter between the two is
// refused and holds the commit, where a larger one would be a stub). A topic
// that does not exist yet, or whose configuration the user may not read
// (DESCRIBE_CONFIGS), is not checked.
func (x *dlqExporter) checkTopic(ctx context.Context, topic string) {
	if x.checked[topic] {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	res, err := x.in.client.DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{Resources: []kafka.DescribeConfigRequestResource{{
		ResourceType: kafka.ResourceTypeTopic, ResourceName: topic, ConfigNames: []string{"cleanup.policy", "max.message.bytes"},
	}}})
	if err == nil && len(res.Resources) == 1 {
		err = res.Resources[0].Error
	}
	if err != nil || len(res.Resources) != 1 {
		if !errors.Is(err, kafka.UnknownTopicOrPartition) && ctx.Err() == nil {
			x.checked[topic] = true
			x.log.Info("cannot read the dead-letter topic's configuration (cleanup.policy, max.message.bytes): not checked",
				"dlq_topic", topic, "err", err)
		}
		return
	}
	x.checked[topic] = true
	for _, e := range res.Resources[0].ConfigEntries {
		switch e.ConfigName {
		case "cleanup.policy":
			if strings.Contains(e.ConfigValue, "compact") {
				x.log.Error("DEAD-LETTER TOPIC IS COMPACTED: the cleaner keeps only the last dead letter of each key, and Kafka refuses a dead letter with a null key (its partition's commit then waits); set cleanup.policy=delete on it",
					"dlq_topic", topic, "cleanup_policy", e.ConfigValue)
			}
		case "max.message.bytes":
			if n, err := strconv.Atoi(e.ConfigValue); err == nil && n < x.in.cfg.DLQMaxBytes {
				x.log.Warn("the dead-letter topic takes smaller messages than --dlq-max-bytes: Kafka refuses a dead letter between the two, and its partition's commit waits; lower --dlq-max-bytes (larger dead letters are exported as stubs) or raise max.message.bytes",
					"dlq_topic", topic, "max_message_bytes", n, "dlq_max_bytes", x.in.cfg.DLQMaxBytes)
			}
		}
	}
}

func headerValue(hs []kafka.Header, name string) string {
	for _, h := range hs {
		if h.Key == name {
			return string(h.Value)
		}
	}
	return ""
}

// ack XACKs, per read, the IDs in acks in the export group (pipelined) and
// returns the error of each read's XACK.
func (x *dlqExporter) ack(ctx context.Context, reads []dlqRead, acks map[int][]string) map[int]error {
	out := map[int]error{}
	pipe := x.in.cfg.Redis.Pipeline()
	cmds := map[int]*redis.IntCmd{}
	for i, ids := range acks {
		if len(ids) > 0 {
			cmds[i] = pipe.XAck(ctx, reads[i].dp.dlq, wire.DLQExportGroup, ids...)
		}
	}
	if len(cmds) == 0 {
		return out
	}
	_, _ = pipe.Exec(ctx)
	for i, c := range cmds {
		if err := c.Err(); err != nil {
			out[i] = fmt.Errorf("XACK %s %s: %w", reads[i].dp.dlq, wire.DLQExportGroup, err)
		}
	}
	return out
}

// settle schedules a partition's next round after one ended with err (nil:
// success) and reports a change of its error in its status hash.
func (x *dlqExporter) settle(ctx context.Context, r *dlqRead, err error, now time.Time) {
	dp := r.dp
	x.mu.Lock()
	if cur, ok := x.parts[dp.stream]; !ok || cur != dp {
		x.mu.Unlock()
		return // revoked meanwhile
	}
	if errors.Is(err, errTopicCreated) {
		dp.due, dp.pending = time.Time{}, true
		x.mu.Unlock()
		return
	}
	if err != nil {
		dp.backoff = min(max(2*dp.backoff, 100*time.Millisecond), 5*time.Second)
		dp.due = now.Add(dp.backoff)
		dp.pending = true
		dp.failing = err.Error()
	} else {
		dp.backoff = 0
		dp.failing = ""
		switch {
		case r.full || (r.fromPending && len(r.entries)+len(r.deleted) > 0):
			dp.due = time.Time{} // more to read
		case r.fromPending:
			dp.pending = false
			dp.due = time.Time{} // now the new ones
		case dp.pending:
			dp.due = time.Time{} // a bound read found pending entries meanwhile
		default:
			dp.due = now.Add(x.in.cfg.DLQScanInterval)
		}
	}
	report, failing := dp.failing != dp.reported, dp.failing
	key := wire.StatusKey(dp.stream)
	x.mu.Unlock()
	if err != nil {
		x.errs.Add(1)
	}
	// The status hash may not exist yet (the partition publishes it after
	// its first observation), or may have been made anew without this
	// field: while failing it is written at every round (at most one per
	// backoff), and once more when the export works again.
	if (report || failing != "") && ctx.Err() == nil {
		if n, _ := dlqStatusScript.Run(ctx, x.in.cfg.Redis, []string{key}, StatusDLQExportError, failing).Int(); n == 1 {
			x.mu.Lock()
			dp.reported = failing
			x.mu.Unlock()
		}
	}
}

// logRound logs, per dead-letter topic, the failures of a round: at error
// level when a topic starts failing, then at most once a minute while it
// goes on, and once when it works again — when every partition that failed
// has exported since (a partition not due this round proves nothing).
// errs maps each partition read to its error (nil: success).
func (x *dlqExporter) logRound(ctx context.Context, reads []dlqRead, errs []error) {
	x.mu.Lock()
	for _, streams := range x.failingParts {
		for st := range streams {
			if _, ok := x.parts[st]; !ok {
				delete(streams, st) // revoked
			}
		}
	}
	x.mu.Unlock()
	touched := map[string]bool{}
	first := map[string]error{}
	firstPart := map[string]tp{}
	for i, r := range reads {
		topic := r.dp.topic
		touched[topic] = true
		if x.failingParts[topic] == nil {
			x.failingParts[topic] = map[string]bool{}
		}
		if errs[i] == nil || errors.Is(errs[i], errTopicCreated) {
			delete(x.failingParts[topic], r.dp.stream)
			continue
		}
		x.failingParts[topic][r.dp.stream] = true
		if first[topic] == nil {
			first[topic], firstPart[topic] = errs[i], r.dp.t
		}
	}
	now := time.Now()
	for topic := range touched {
		failed := len(x.failingParts[topic])
		since, failing := x.failingSince[topic]
		switch {
		case failed > 0 && !failing:
			x.failingSince[topic], x.loggedAt[topic] = now, now
			x.log.Error("exporting dead letters to Kafka failed; retrying with backoff: the commits of the partitions concerned wait for them",
				"dlq_topic", topic, "partitions", failed, "topic", firstPart[topic].topic, "partition", firstPart[topic].partition, "err", first[topic])
		case failed > 0 && first[topic] != nil && now.Sub(x.loggedAt[topic]) >= time.Minute:
			x.loggedAt[topic] = now
			x.log.Warn("exporting dead letters to Kafka still fails; the commits of the partitions concerned wait for them",
				"dlq_topic", topic, "partitions", failed, "failing_for", now.Sub(since).Round(time.Second), "err", first[topic])
		case failed == 0 && failing && ctx.Err() == nil:
			delete(x.failingSince, topic)
			x.log.Info("exporting dead letters to Kafka works again", "dlq_topic", topic, "failed_for", now.Sub(since).Round(time.Second))
		}
	}
}

// dlqBalancer puts a source partition's dead letters in the dead-letter
// topic's partition of the same number (modulo the partition count), so that
// they keep their order and "kbridge dlq --from-kafka --partition N" reads
// one partition.
type dlqBalancer struct{}

func (dlqBalancer) Balance(msg kafka.Message, partitions ...int) int {
	n, err := strconv.Atoi(headerValue(msg.Headers, wire.HeaderDLQPartition))
	if err != nil || n < 0 {
		n = 0
	}
	return partitions[n%len(partitions)]
}

// dlqDefaults fills in the defaults of the dead-letter export's fields.
func (c Config) dlqDefaults() Config {
	if c.DLQTopic == "" {
		c.DLQTopic = wire.DefaultDLQTopic
	}
	if c.DLQMaxBytes == 0 {
		c.DLQMaxBytes = 1 << 20
	}
	if c.DLQScanInterval == 0 {
		c.DLQScanInterval = 5 * time.Second
	}
	return c
}

// dlqProblems lists what is wrong with the dead-letter export's fields.
func (c Config) dlqProblems() []string {
	if c.DisableDLQExport {
		return nil
	}
	var p []string
	for _, t := range c.Topics {
		if !validTopic(t) {
			continue // reported already
		}
		d := wire.DLQTopic(c.DLQTopic, t)
		if !validTopic(d) {
			p = append(p, fmt.Sprintf("--dlq-topic %q gives %q for topic %q: not a valid Kafka topic name (letters, digits, '.', '_', '-'; at most 249)", c.DLQTopic, d, t))
			continue
		}
		for _, s := range c.Topics {
			if d == s {
				p = append(p, fmt.Sprintf("--dlq-topic %q gives %q for topic %q, which is a topic this ingest reads: its dead letters would come back as records", c.DLQTopic, d, t))
			}
		}
	}
	if c.DLQMaxBytes < 1024 {
		p = append(p, fmt.Sprintf("--dlq-max-bytes %d must be at least 1024", c.DLQMaxBytes))
	}
	if c.DLQScanInterval < 10*time.Millisecond {
		p = append(p, fmt.Sprintf("dead-letter scan interval %v must be at least 10ms", c.DLQScanInterval))
	}
	return p
}
