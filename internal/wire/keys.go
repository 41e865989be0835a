package wire

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// DefaultPrefix is the key prefix used when none is configured.
const DefaultPrefix = "kbridge"

// StreamKey returns the key of the stream that holds the records of one Kafka
// partition: "<prefix>:{<topic>:<partition>}".
func StreamKey(prefix, topic string, partition int) string {
	return prefix + ":{" + topic + ":" + strconv.Itoa(partition) + "}"
}

// DLQKey returns the key of the dead-letter stream of a partition stream.
func DLQKey(stream string) string { return stream + ":dlq" }

// ReplayKey returns the key of the replay stream of a partition stream: dead
// letters that "kbridge dlq replay" handed back to the workers.
func ReplayKey(stream string) string { return stream + ":replay" }

// StatusKey returns the key of the status hash the ingest keeps for a
// partition stream.
func StatusKey(stream string) string { return stream + ":status" }

// RunsKey returns the key of the hash in which "kbridge worker" records, per
// entry ID of the stream, how many times a handler of the group was started
// on the entry (a run): "<stream>:runs:<group>". It decides the dead letter
// for deliveries that never ran (a worker that read entries ahead and died):
// docs/wire.md, rule 8. Each group has its own record (each group gets every
// record, with a retry budget of its own); the key shares the stream's hash
// tag, so the scripts that take both run on Redis Cluster.
func RunsKey(stream, group string) string { return stream + ":runs:" + group }

// RegistryKey returns the key of the set that lists every partition stream
// under prefix. Workers read it (SMEMBERS) to discover partitions.
func RegistryKey(prefix string) string { return prefix + ":streams" }

// ParseStreamKey splits a partition stream key into its prefix, topic and
// partition. It is the inverse of StreamKey: the partition is a canonical
// decimal 0..2147483647 (the one StreamKey writes), so "kbridge:{orders:03}"
// or "kbridge:{orders:+3}" is not a partition stream key.
func ParseStreamKey(key string) (prefix, topic string, partition int, err error) {
	open := strings.LastIndex(key, ":{")
	if open < 0 || !strings.HasSuffix(key, "}") {
		return "", "", 0, fmt.Errorf("wire: %q is not a partition stream key (want <prefix>:{<topic>:<partition>})", key)
	}
	tag := key[open+2 : len(key)-1]
	colon := strings.LastIndexByte(tag, ':')
	if colon <= 0 {
		return "", "", 0, fmt.Errorf("wire: %q is not a partition stream key (want <prefix>:{<topic>:<partition>})", key)
	}
	p, ok := parseDecimal(tag[colon+1:], false)
	if !ok || p > math.MaxInt32 {
		return "", "", 0, fmt.Errorf("wire: %q has no valid partition number (a decimal 0..2147483647, no sign or leading zero)", key)
	}
	partition = int(p)
	return key[:open], tag[:colon], partition, nil
}

// EntryID returns the stream entry ID of a Kafka offset: "<offset>-1". The
// sequence part is 1 because Redis refuses the ID "0-0".
func EntryID(offset int64) string { return strconv.FormatInt(offset, 10) + "-1" }

// MinID returns the XTRIM MINID threshold that removes every entry whose
// offset is below offset, and keeps offset itself.
func MinID(offset int64) string { return strconv.FormatInt(offset, 10) + "-0" }

// ParseID returns the Kafka offset of a stream entry ID "<offset>-<seq>".
func ParseID(id string) (int64, error) {
	ms, seq, ok := strings.Cut(id, "-")
	if !ok {
		seq = "0"
	}
	off, err := strconv.ParseInt(ms, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("wire: bad stream ID %q: %w", id, err)
	}
	if _, err := strconv.ParseUint(seq, 10, 64); err != nil {
		return 0, fmt.Errorf("wire: bad stream ID %q: %w", id, err)
	}
	return off, nil
}

// Through returns the highest offset an ID covers, the way a group's
// last-delivered-id or a stream's last-generated-id is read: "<o>-<s>" with
// s >= 1 covers offset o; "<o>-0" covers only the offsets below o. So "0-0"
// (a new group, an empty stream) gives -1: nothing.
func Through(id string) (int64, error) {
	ms, seq, ok := strings.Cut(id, "-")
	off, err := strconv.ParseInt(ms, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("wire: bad stream ID %q: %w", id, err)
	}
	if !ok || seq == "0" {
		return off - 1, nil
	}
	if _, err := strconv.ParseUint(seq, 10, 64); err != nil {
		return 0, fmt.Errorf("wire: bad stream ID %q: %w", id, err)
	}
	return off, nil
}

// AppendKey returns the name a partition stream takes, for the length of one
// MULTI/EXEC append transaction, between the ingest's guard script and the
// end of the transaction (bridge/stream_multi.go); nonce makes it unique to
// the transaction. It shares the stream's hash tag, hence its Redis Cluster
// slot. Outside a transaction no such key exists (docs/operations.md says
// what one found left means).
func AppendKey(stream, nonce string) string { return stream + ":append:" + nonce }
