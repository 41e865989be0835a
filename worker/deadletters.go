package worker

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/wire"
)

// DeadLetterInfo says why an entry was dead-lettered: reason, last error,
// group, consumer, deliveries, the stream and ID it was read from, and when.
type DeadLetterInfo = wire.DLQInfo

// DeadLetter is one entry of a dead-letter stream.
type DeadLetter struct {
	// Ref names the dead letter for ShowDeadLetter and "kbridge dlq":
	// "<topic>:<partition>/<dead-letter entry ID>".
	Ref string
	// Stream is the partition stream, DLQ its dead-letter stream and ID the
	// dead letter's entry ID there.
	Stream, DLQ, ID string

	Topic     string
	Partition int
	Offset    int64 // -1 if Malformed
	Key       []byte
	Value     []byte
	Headers   []Header
	// Malformed is true when the original fields do not follow the wire
	// contract; Fields has them as they were.
	Malformed bool
	Fields    map[string]string

	Info DeadLetterInfo
}

// Filter selects dead letters. The zero value selects all.
type Filter struct {
	Topic      string // "" = every topic
	Partitions []int  // nil = every partition
	Group      string // "" = every group
	Limit      int    // at most this many in all; 0 = no limit
}

// ParseRef splits a dead letter reference "<topic>:<partition>/<id>".
func ParseRef(ref string) (topic string, partition int, id string, err error) {
	tp, id, ok := strings.Cut(ref, "/")
	colon := strings.LastIndexByte(tp, ':')
	if !ok || colon <= 0 || id == "" {
		return "", 0, "", fmt.Errorf("dead letter reference %q: want <topic>:<partition>/<id>, as \"kbridge dlq list\" prints", ref)
	}
	partition, err = strconv.Atoi(tp[colon+1:])
	if err != nil || partition < 0 {
		return "", 0, "", fmt.Errorf("dead letter reference %q: bad partition", ref)
	}
	if _, err := wire.ParseID(id); err != nil {
		return "", 0, "", fmt.Errorf("dead letter reference %q: bad entry ID", ref)
	}
	return tp[:colon], partition, id, nil
}

// ListDeadLetters returns the dead letters under prefix that f selects,
// partition by partition (sorted by stream key), oldest first.
func ListDeadLetters(ctx context.Context, rdb redis.UniversalClient, prefix string, f Filter) ([]DeadLetter, error) {
	streams, err := rdb.SMembers(ctx, wire.RegistryKey(prefix)).Result()
	if err != nil {
		return nil, fmt.Errorf("read registry %s: %w", wire.RegistryKey(prefix), err)
	}
	slices.Sort(streams)
	var out []DeadLetter
	for _, s := range streams {
		_, topic, part, err := wire.ParseStreamKey(s)
		if err != nil || (f.Topic != "" && topic != f.Topic) || (f.Partitions != nil && !slices.Contains(f.Partitions, part)) {
			continue
		}
		start := "-"
		for {
			batch, err := rdb.XRangeN(ctx, wire.DLQKey(s), start, "+", 500).Result()
			if err != nil {
				return out, fmt.Errorf("XRANGE %s: %w", wire.DLQKey(s), err)
			}
			for _, xm := range batch {
				d := decodeDeadLetter(s, topic, part, xm)
				if f.Group != "" && d.Info.Group != f.Group {
					continue
				}
				out = append(out, d)
				if f.Limit > 0 && len(out) >= f.Limit {
					return out, nil
				}
			}
			if len(batch) < 500 {
				break
			}
			start = "(" + batch[len(batch)-1].ID
		}
	}
	return out, nil
}

// GetDeadLetter returns the dead letter that ref names (see DeadLetter.Ref),
// or an error wrapping ErrNotFound.
func GetDeadLetter(ctx context.Context, rdb redis.UniversalClient, prefix, ref string) (DeadLetter, error) {
	topic, part, id, err := ParseRef(ref)
	if err != nil {
		return DeadLetter{}, err
	}
	s := wire.StreamKey(prefix, topic, part)
	xs, err := rdb.XRange(ctx, wire.DLQKey(s), id, id).Result()
	if err != nil {
		return DeadLetter{}, fmt.Errorf("XRANGE %s: %w", wire.DLQKey(s), err)
	}
	if len(xs) == 0 {
		return DeadLetter{}, fmt.Errorf("%w: %s (stream %s)", ErrNotFound, ref, wire.DLQKey(s))
	}
	return decodeDeadLetter(s, topic, part, xs[0]), nil
}

func decodeDeadLetter(stream, topic string, part int, xm redis.XMessage) DeadLetter {
	d := DeadLetter{
		Ref:    fmt.Sprintf("%s:%d/%s", topic, part, xm.ID),
		Stream: stream, DLQ: wire.DLQKey(stream), ID: xm.ID,
		Topic: topic, Partition: part, Offset: -1,
		Fields: make(map[string]string, len(xm.Values)),
	}
	for k, v := range xm.Values {
		d.Fields[k] = fmt.Sprint(v)
	}
	d.Info, _ = wire.DecodeDLQInfo(xm.Values)
	r, err := wire.Decode(xm.Values)
	if err != nil || d.Info.Reason == wire.ReasonMalformed {
		d.Malformed = true
		return d
	}
	d.Offset, d.Key, d.Value = r.Offset, r.Key, r.Value
	for _, h := range r.Headers {
		d.Headers = append(d.Headers, Header{Key: h.Key, Value: h.Value})
	}
	return d
}

// ReplayDeadLetters hands dead letters back to the workers: each moves
// atomically to its partition's replay stream, where the group that
// dead-lettered it (created there at ID 0 if missing) reads it again with a
// fresh delivery count. Workers of other groups acknowledge it without
// handling it: they had processed the record already. Before adding, the
// entries of the replay stream that every group acknowledged are trimmed.
// It returns how many were replayed.
func ReplayDeadLetters(ctx context.Context, rdb redis.UniversalClient, dls []DeadLetter) (int, error) {
	n := 0
	trimmed := map[string]bool{}
	for _, d := range dls {
		replay := wire.ReplayKey(d.Stream)
		group := d.Info.Group
		if group == "" {
			group = DefaultGroup
		}
		if !trimmed[replay] {
			if err := TrimReplay(ctx, rdb, replay); err != nil {
				return n, err
			}
			trimmed[replay] = true
		}
		if err := rdb.XGroupCreateMkStream(ctx, replay, group, "0").Err(); err != nil && !redis.HasErrorPrefix(err, "BUSYGROUP") {
			return n, fmt.Errorf("create group %s on %s: %w", group, replay, err)
		}
		moved, err := replayScript.Run(ctx, rdb, []string{d.DLQ, replay}, d.ID).Int64()
		if err != nil {
			return n, fmt.Errorf("replay %s: %w", d.Ref, err)
		}
		n += int(moved)
	}
	return n, nil
}

// DeleteDeadLetters removes dead letters for good. It returns how many were
// deleted.
func DeleteDeadLetters(ctx context.Context, rdb redis.UniversalClient, dls []DeadLetter) (int, error) {
	n := 0
	for _, d := range dls {
		c, err := rdb.XDel(ctx, d.DLQ, d.ID).Result()
		if err != nil {
			return n, fmt.Errorf("XDEL %s %s: %w", d.DLQ, d.ID, err)
		}
		n += int(c)
	}
	return n, nil
}

// TrimReplay removes from a replay stream the entries that every group on it
// has acknowledged: those below the lowest pending entry and at or below the
// last delivered one, over all groups. As for partition streams, each
// group's last-delivered-id is read before its pending entries, so an entry
// delivered between the two reads cannot be trimmed while pending.
func TrimReplay(ctx context.Context, rdb redis.UniversalClient, replay string) error {
	groups, err := rdb.XInfoGroups(ctx, replay).Result()
	if isNoSuchKey(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("XINFO GROUPS %s: %w", replay, err)
	}
	if len(groups) == 0 {
		return nil
	}
	var frontier string // lowest ID still needed; "" = none seen yet
	lower := func(id string) {
		if frontier == "" || compareIDs(id, frontier) < 0 {
			frontier = id
		}
	}
	for _, g := range groups {
		p, err := rdb.XPending(ctx, replay, g.Name).Result()
		if err != nil {
			return fmt.Errorf("XPENDING %s %s: %w", replay, g.Name, err)
		}
		if p.Count > 0 {
			lower(p.Lower)
		}
		lower(nextID(g.LastDeliveredID))
	}
	if err := rdb.XTrimMinID(ctx, replay, frontier).Err(); err != nil {
		return fmt.Errorf("XTRIM %s MINID %s: %w", replay, frontier, err)
	}
	return nil
}

// nextID returns the smallest stream ID above id.
func nextID(id string) string {
	ms, seq, _ := strings.Cut(id, "-")
	s, _ := strconv.ParseUint(seq, 10, 64)
	return ms + "-" + strconv.FormatUint(s+1, 10)
}

func compareIDs(a, b string) int {
	am, as, _ := strings.Cut(a, "-")
	bm, bs, _ := strings.Cut(b, "-")
	x, _ := strconv.ParseUint(am, 10, 64)
	y, _ := strconv.ParseUint(bm, 10, 64)
	if x != y {
		if x < y {
			return -1
		}
		return 1
	}
	x, _ = strconv.ParseUint(as, 10, 64)
	y, _ = strconv.ParseUint(bs, 10, 64)
	switch {
	case x < y:
		return -1
	case x > y:
		return 1
	}
	return 0
}
