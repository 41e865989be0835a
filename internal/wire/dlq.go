package wire

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Fields a dead letter carries beside the fields of the entry it replaces.
// They are appended after the original fields; a replayed entry keeps them,
// so a handler can see why the record was dead-lettered before. See
// docs/wire.md.
const (
	FieldDLQReason     = "dlq_reason"     // one of the Reason* constants
	FieldDLQError      = "dlq_error"      // the last error, as text
	FieldDLQGroup      = "dlq_group"      // the worker group that gave up
	FieldDLQConsumer   = "dlq_consumer"   // the consumer that wrote the dead letter
	FieldDLQDeliveries = "dlq_deliveries" // deliveries of the entry when it was dead-lettered
	FieldDLQStream     = "dlq_stream"     // the stream the entry was read from (partition or replay stream)
	FieldDLQID         = "dlq_id"         // the entry's ID in that stream
	FieldDLQTime       = "dlq_time"       // when it was dead-lettered, Unix milliseconds
)

// Reasons written in FieldDLQReason.
const (
	// ReasonMaxDeliveries: the handler failed on every one of the allowed
	// deliveries (or the workers that held it kept dying).
	ReasonMaxDeliveries = "max-deliveries"
	// ReasonMalformed: the entry does not follow the wire contract
	// (Decode failed); it is dead-lettered on first sight.
	ReasonMalformed = "malformed"
	// ReasonRejected: the handler declared the failure permanent.
	ReasonRejected = "rejected"
)

// ReplaySuffix ends the key of every replay stream (see ReplayKey).
const ReplaySuffix = ":replay"

// PartitionStreamOf returns the partition stream a stream belongs to: key
// itself for a partition stream, the partition stream of a replay stream.
// Dead letters of both go to DLQKey(PartitionStreamOf(key)).
func PartitionStreamOf(key string) string {
	return strings.TrimSuffix(key, ReplaySuffix)
}

// IsReplayKey reports whether key names a replay stream.
func IsReplayKey(key string) bool { return strings.HasSuffix(key, ReplaySuffix) }

// DLQInfo is what a dead letter says about why it was written.
type DLQInfo struct {
	Reason     string
	Error      string
	Group      string
	Consumer   string
	Deliveries int64
	Stream     string // stream the entry was read from
	ID         string // entry ID in Stream
	Time       time.Time
}

// IsDLQField reports whether a field name is one of the dead-letter fields.
func IsDLQField(name string) bool { return strings.HasPrefix(name, "dlq_") }

// DeadLetterFields returns the field/value pairs of a dead letter, ready for
// XADD: the original entry's fields, each name once with the value that
// counts (orig is a map: a name the entry repeats has its last value), any
// earlier dead-letter fields dropped, the contract's fields first in contract
// order, then the rest sorted by name; then the fields of info, in the order
// of the constants above. An entry of more than MaxFields fields (malformed)
// keeps only the contract's fields: the scripts could not pass them all.
func DeadLetterFields(orig map[string]any, info DLQInfo) []any {
	out := make([]any, 0, 2*min(len(orig), MaxFields+8)+16)
	seen := map[string]bool{}
	tooMany := countFields(orig) > MaxFields
	for _, f := range []string{FieldTopic, FieldPartition, FieldOffset, FieldTimestamp, FieldKey, FieldValue, FieldHeaders} {
		if v, ok := orig[f]; ok {
			out = append(out, f, fmt.Sprint(v))
			seen[f] = true
		}
	}
	var rest []string
	for f := range orig {
		if !seen[f] && !IsDLQField(f) && !tooMany {
			rest = append(rest, f)
		}
	}
	sort.Strings(rest)
	for _, f := range rest {
		out = append(out, f, fmt.Sprint(orig[f]))
	}
	return append(out,
		FieldDLQReason, info.Reason,
		FieldDLQError, info.Error,
		FieldDLQGroup, info.Group,
		FieldDLQConsumer, info.Consumer,
		FieldDLQDeliveries, strconv.FormatInt(info.Deliveries, 10),
		FieldDLQStream, info.Stream,
		FieldDLQID, info.ID,
		FieldDLQTime, strconv.FormatInt(info.Time.UnixMilli(), 10))
}

// DecodeDLQInfo reads the dead-letter fields of an entry. ok is false when
// the entry has none (it was never dead-lettered).
func DecodeDLQInfo(values map[string]any) (info DLQInfo, ok bool) {
	s := func(name string) string {
		v, found := values[name]
		if found {
			ok = true
		}
		str, _ := v.(string)
		return str
	}
	info.Reason = s(FieldDLQReason)
	info.Error = s(FieldDLQError)
	info.Group = s(FieldDLQGroup)
	info.Consumer = s(FieldDLQConsumer)
	info.Deliveries, _ = strconv.ParseInt(s(FieldDLQDeliveries), 10, 64)
	info.Stream = s(FieldDLQStream)
	info.ID = s(FieldDLQID)
	if ms, err := strconv.ParseInt(s(FieldDLQTime), 10, 64); err == nil {
		info.Time = time.UnixMilli(ms)
	}
	return info, ok
}

// ReplayFields returns the field/value pairs of a replayed entry, ready for
// XADD to the replay stream: every field of the dead letter, wire fields
// first, then the rest sorted by name.
func ReplayFields(dead map[string]any) []any {
	out := make([]any, 0, 2*len(dead))
	seen := map[string]bool{}
	for _, f := range []string{FieldTopic, FieldPartition, FieldOffset, FieldTimestamp, FieldKey, FieldValue, FieldHeaders} {
		if v, ok := dead[f]; ok {
			out = append(out, f, fmt.Sprint(v))
			seen[f] = true
		}
	}
	var rest []string
	for f := range dead {
		if !seen[f] {
			rest = append(rest, f)
		}
	}
	sort.Strings(rest)
	for _, f := range rest {
		out = append(out, f, fmt.Sprint(dead[f]))
	}
	return out
}
