package conformance

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/wire"
)

// Redis helpers of the scenarios. Errors of the kit's own Redis calls stop
// the scenario (they are not the worker's fault).

// stream returns the partition stream key of topic/partition.
func (s *run) stream(topic string, partition int) string {
	return wire.StreamKey(s.prefix, topic, partition)
}

// createStream creates key (MKSTREAM) with each group at ID 0, as the
// ingest does, and registers it when register is set.
func (s *run) createStream(ctx context.Context, key string, register bool, groups ...string) error {
	s.track(key)
	for _, g := range groups {
		if err := s.k.rdb.XGroupCreateMkStream(ctx, key, g, "0").Err(); err != nil && !redis.HasErrorPrefix(err, "BUSYGROUP") {
			return err
		}
	}
	if register {
		return s.k.rdb.SAdd(ctx, wire.RegistryKey(s.prefix), key).Err()
	}
	return nil
}

// addRecords appends records from offset from on, one per value, as the
// ingest writes them (key "k<offset>").
func (s *run) addRecords(ctx context.Context, stream string, from int64, values ...string) error {
	_, topic, partition, err := wire.ParseStreamKey(stream)
	if err != nil {
		return err
	}
	for i, v := range values {
		o := from + int64(i)
		r := wire.Record{Topic: topic, Partition: partition, Offset: o, Time: time.UnixMilli(1700000000000 + o),
			Key: []byte("k" + itoa(o)), Value: []byte(v)}
		if err := s.k.rdb.XAdd(ctx, &redis.XAddArgs{Stream: stream, ID: wire.EntryID(o), Values: r.AppendFields(nil)}).Err(); err != nil {
			return err
		}
	}
	return nil
}

// pendingEntry is one entry of a group's pending list.
type pendingEntry struct {
	Consumer   string
	Idle       time.Duration
	Deliveries int64
}

// pending returns the pending entry id of stream, if it is pending.
func (s *run) pending(ctx context.Context, stream, id string) (pendingEntry, bool, error) {
	ps, err := s.k.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: stream, Group: Group, Start: id, End: id, Count: 1}).Result()
	if err != nil || len(ps) == 0 {
		return pendingEntry{}, false, err
	}
	return pendingEntry{Consumer: ps[0].Consumer, Idle: ps[0].Idle, Deliveries: ps[0].RetryCount}, true, nil
}

// pendingCount returns how many entries of stream are pending in the group.
func (s *run) pendingCount(ctx context.Context, stream string) (int64, error) {
	p, err := s.k.rdb.XPending(ctx, stream, Group).Result()
	if err != nil {
		return 0, err
	}
	return p.Count, nil
}

// settled reports whether the group has read every entry of stream and
// acknowledged it: nothing pending, last-delivered-id at the stream's top.
func (s *run) settled(ctx context.Context, stream string) bool {
	n, err := s.pendingCount(ctx, stream)
	return err == nil && n == 0 && s.allRead(ctx, stream)
}

// allRead reports whether the group's last-delivered-id is the stream's
// last entry.
func (s *run) allRead(ctx context.Context, stream string) bool {
	top, err := s.k.rdb.XRevRangeN(ctx, stream, "+", "-", 1).Result()
	if err != nil || len(top) == 0 {
		return err == nil
	}
	groups, err := s.k.rdb.XInfoGroups(ctx, stream).Result()
	if err != nil {
		return false
	}
	for _, g := range groups {
		if g.Name == Group {
			return g.LastDeliveredID == top[0].ID
		}
	}
	return false
}

// deadLetters returns the entries of a dead-letter stream.
func (s *run) deadLetters(ctx context.Context, dlq string) ([]redis.XMessage, error) {
	return s.k.rdb.XRange(ctx, dlq, "-", "+").Result()
}

// deadLetterOf returns the dead letter whose dlq_stream and dlq_id name
// the entry, if there is one.
func (s *run) deadLetterOf(ctx context.Context, stream, id string) (redis.XMessage, bool, error) {
	dls, err := s.deadLetters(ctx, wire.DLQKey(wire.PartitionStreamOf(stream)))
	if err != nil {
		return redis.XMessage{}, false, err
	}
	for _, d := range dls {
		if d.Values[wire.FieldDLQStream] == stream && d.Values[wire.FieldDLQID] == id {
			return d, true, nil
		}
	}
	return redis.XMessage{}, false, nil
}

// consumer returns the group's consumer of that name on stream, if any.
func (s *run) consumer(ctx context.Context, stream, name string) (redis.XInfoConsumer, bool, error) {
	cs, err := s.k.rdb.XInfoConsumers(ctx, stream, Group).Result()
	if err != nil {
		return redis.XInfoConsumer{}, false, err
	}
	for _, c := range cs {
		if c.Name == name {
			return c, true, nil
		}
	}
	return redis.XInfoConsumer{}, false, nil
}

// hasGroup reports whether the group exists on stream.
func (s *run) hasGroup(ctx context.Context, stream, group string) (bool, error) {
	gs, err := s.k.rdb.XInfoGroups(ctx, stream).Result()
	if err != nil {
		if strings.Contains(strings.ToLower(err.Error()), "no such key") {
			return false, nil
		}
		return false, err
	}
	for _, g := range gs {
		if g.Name == group {
			return true, nil
		}
	}
	return false, nil
}

// readAs reads count new entries of stream as consumer (a ghost: a
// consumer that then dies).
func (s *run) readAs(ctx context.Context, stream, consumer string, count int64) error {
	err := s.k.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: Group, Consumer: consumer, Streams: []string{stream, ">"}, Count: count, Block: -1}).Err()
	if errors.Is(err, redis.Nil) {
		return nil
	}
	return err
}

// claim moves entries to consumer (min idle 0, JUSTID) and sets their idle
// time (idle >= 0) and delivery count (count > 0).
func (s *run) claim(ctx context.Context, stream, consumer string, idle time.Duration, count int64, ids ...string) error {
	args := []any{"XCLAIM", stream, Group, consumer, 0}
	for _, id := range ids {
		args = append(args, id)
	}
	if idle >= 0 {
		args = append(args, "IDLE", idle.Milliseconds())
	}
	if count > 0 {
		args = append(args, "RETRYCOUNT", count)
	}
	args = append(args, "JUSTID")
	return s.k.rdb.Do(ctx, args...).Err()
}

// keepLease holds an entry for consumer in the background until the
// returned stop is called: whenever its idle time reaches frac of the
// visibility timeout, it is set back to from (a fraction too). A worker that
// uses the group's visibility timeout never takes it; one that uses a
// shorter timeout, above from, takes it on almost any reclaim.
func (s *run) keepLease(ctx context.Context, stream, id, consumer string, from, frac float64) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	vt := float64(s.k.cfg.VisibilityTimeout)
	limit, idle := time.Duration(vt*frac), time.Duration(vt*from)
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			if p, ok, err := s.pending(ctx, stream, id); err == nil && ok && p.Consumer == consumer && p.Idle >= limit {
				_ = s.claim(ctx, stream, consumer, idle, 0, id)
			}
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return func() { cancel(); <-done }
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// track adds a stream to those the loss check reads after the scenario.
func (s *run) track(stream string) {
	if !slices.Contains(s.streams, stream) {
		s.streams = append(s.streams, stream)
	}
}

// checkNothingLost checks W20 after a scenario, its workers stopped: every
// entry the group read (up to its last-delivered-id) of every stream the
// scenario made ended handled (an end event with result ok), is in the
// dead-letter stream, is still pending (under any consumer: it will be
// reclaimed), or is a replayed dead letter of another group (acknowledged
// unhandled by rule 11). Anything else was acknowledged without being
// handled, or dropped from the pending list (XGROUP DELCONSUMER): lost, and
// the ingest's commit passes it.
func (s *run) checkNothingLost(ctx context.Context) error {
	byEntry := entryEvents(s.readEvents())
	checked, lost := 0, 0
	for _, st := range s.streams {
		groups, err := s.k.rdb.XInfoGroups(ctx, st).Result()
		if err != nil {
			if strings.Contains(strings.ToLower(err.Error()), "no such key") {
				continue
			}
			return err
		}
		last := ""
		for _, g := range groups {
			if g.Name == Group {
				last = g.LastDeliveredID
			}
		}
		if last == "" || last == "0-0" {
			continue
		}
		entries, err := s.k.rdb.XRange(ctx, st, "-", last).Result()
		if err != nil {
			return err
		}
		var dls []redis.XMessage
		if len(entries) > 0 {
			if dls, err = s.deadLetters(ctx, wire.DLQKey(wire.PartitionStreamOf(st))); err != nil {
				return err
			}
		}
		for _, e := range entries {
			checked++
			if endedOK(byEntry[ref(st, e.ID)]) || slices.ContainsFunc(dls, func(d redis.XMessage) bool {
				return d.Values[wire.FieldDLQStream] == st && d.Values[wire.FieldDLQID] == e.ID
			}) {
				continue
			}
			if g, ok := e.Values[wire.FieldDLQGroup].(string); ok && g != "" && g != Group && wire.IsReplayKey(st) {
				continue
			}
			if _, pend, err := s.pending(ctx, st, e.ID); err != nil {
				return err
			} else if pend {
				continue
			}
			lost++
			if lost <= 5 {
				s.check("W20", false, "%s %s was read by group %q (its last-delivered-id is %s) but was neither handled (no end event with result ok), "+
					"dead-lettered nor left pending: lost, the ingest's commit passes it (acknowledged unhandled, or dropped by XGROUP DELCONSUMER? see rules 6 and 12)",
					st, e.ID, Group, last)
			}
		}
	}
	if lost > 5 {
		s.check("W20", false, "%d entries lost in all", lost)
	}
	if lost == 0 {
		s.check("W20", true, "")
	}
	s.logf("loss check: %d entries read by the group, %d lost", checked, lost)
	return nil
}
