package bridge

import (
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// PartitionStatus is the state of one assigned partition, as published in
// its Redis status hash and returned by Ingest.Stats.
type PartitionStatus struct {
	Topic     string
	Partition int
	Stream    string
	// Committed is the last offset committed to Kafka (-1: none yet).
	Committed int64
	// LogEnd is the partition's high watermark at the last fetch.
	LogEnd int64
	// Top is the offset of the stream's last entry ever appended (-1: none).
	Top int64
	// Length is XLEN of the stream.
	Length int64
	// Backlog is the records appended and not yet acknowledged by every group.
	Backlog int64
	// Pending sums the groups' pending entries.
	Pending int64
	// Paused is true while the partition is not fetched (backpressure).
	Paused bool
	// Stalled says why the partition stopped being fetched and committed
	// (the topic was recreated, its log truncated below the stream, an
	// entry another program wrote); "" if not.
	Stalled string
	// StallCause is StallTopicRecreated, StallBeyondLogEnd,
	// StallStrayEntry or StallBatchTooLarge while Stalled is set.
	StallCause string
	// TopicID is the Kafka topic ID of the records in the stream, in hex
	// ("" when the brokers give none).
	TopicID string
	// OldestPending is the lowest pending offset (-1: none), with the group
	// and consumer that hold it and for how long it has been idle.
	OldestPending         int64
	OldestPendingGroup    string
	OldestPendingConsumer string
	OldestPendingIdle     time.Duration
	OldestPendingDelivery int64
	// WorkerGroups are the groups the owning ingest creates (its
	// --worker-groups): a group removed while listed here is recreated at 0.
	WorkerGroups []string
	// Owner identifies the ingest process (host:pid) and Updated the time of
	// this status.
	Owner   string
	Updated time.Time
	// Fetches counts the fetch requests the partition was in (in process
	// only: Ingest.Stats; not in the status hash).
	Fetches int64
}

// Lag is the Kafka lag of the group on this partition: log end minus the
// committed offset.
func (s PartitionStatus) Lag() int64 {
	if s.Committed < 0 || s.LogEnd < s.Committed {
		return 0
	}
	return s.LogEnd - s.Committed
}

// Field names of the status hash, <prefix>:{<topic>:<partition>}:status.
const (
	StatusCommitted       = "committed"
	StatusLogEnd          = "log_end"
	StatusTop             = "top"
	StatusLength          = "length"
	StatusBacklog         = "backlog"
	StatusPending         = "pending"
	StatusPaused          = "paused"
	StatusStalled         = "stalled"
	StatusStallCause      = "stall_cause"
	StatusTopicID         = "topic_id"
	StatusOldestOffset    = "oldest_pending_offset"
	StatusOldestGroup     = "oldest_pending_group"
	StatusOldestConsumer  = "oldest_pending_consumer"
	StatusOldestIdleMs    = "oldest_pending_idle_ms"
	StatusOldestDelivered = "oldest_pending_deliveries"
	StatusWorkerGroups    = "worker_groups"
	StatusOwner           = "owner"
	StatusUpdatedMs       = "updated_ms"
)

func (s PartitionStatus) fields() []any {
	b := "0"
	if s.Paused {
		b = "1"
	}
	return []any{
		StatusCommitted, itoa(s.Committed),
		StatusLogEnd, itoa(s.LogEnd),
		StatusTop, itoa(s.Top),
		StatusLength, itoa(s.Length),
		StatusBacklog, itoa(s.Backlog),
		StatusPending, itoa(s.Pending),
		StatusPaused, b,
		StatusStalled, s.Stalled,
		StatusStallCause, s.StallCause,
		StatusTopicID, s.TopicID,
		StatusOldestOffset, itoa(s.OldestPending),
		StatusOldestGroup, s.OldestPendingGroup,
		StatusOldestConsumer, s.OldestPendingConsumer,
		StatusOldestIdleMs, itoa(s.OldestPendingIdle.Milliseconds()),
		StatusOldestDelivered, itoa(s.OldestPendingDelivery),
		StatusWorkerGroups, strings.Join(s.WorkerGroups, ","),
		StatusOwner, s.Owner,
		StatusUpdatedMs, itoa(s.Updated.UnixMilli()),
	}
}

// ParseStatus reads a status hash (HGETALL) back into a PartitionStatus.
func ParseStatus(h map[string]string) PartitionStatus {
	n := func(k string) int64 {
		v, err := strconv.ParseInt(h[k], 10, 64)
		if err != nil {
			return -1
		}
		return v
	}
	return PartitionStatus{
		Committed:             n(StatusCommitted),
		LogEnd:                n(StatusLogEnd),
		Top:                   n(StatusTop),
		Length:                n(StatusLength),
		Backlog:               n(StatusBacklog),
		Pending:               n(StatusPending),
		Paused:                h[StatusPaused] == "1",
		Stalled:               h[StatusStalled],
		StallCause:            h[StatusStallCause],
		TopicID:               h[StatusTopicID],
		OldestPending:         n(StatusOldestOffset),
		OldestPendingGroup:    h[StatusOldestGroup],
		OldestPendingConsumer: h[StatusOldestConsumer],
		OldestPendingIdle:     time.Duration(n(StatusOldestIdleMs)) * time.Millisecond,
		OldestPendingDelivery: n(StatusOldestDelivered),
		WorkerGroups:          splitGroups(h[StatusWorkerGroups]),
		Owner:                 h[StatusOwner],
		Updated:               time.UnixMilli(n(StatusUpdatedMs)),
	}
}

func splitGroups(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// Counters are the ingest's running totals since start. Read them with
// Ingest.Stats.
type Counters struct {
	// Fetches counts partition fetches: one partition's entry in a fetch
	// request. A request carries many partitions of one broker
	// (FetchRequests counts the requests).
	Fetches           int64
	FetchRequests     int64
	Fetched           int64 // records fetched from Kafka (and delivered by the isolation level)
	AbortedSkipped    int64 // records of aborted transactions skipped (read_committed)
	MarkersSkipped    int64 // transaction markers skipped
	Observations      int64 // stream snapshots read (one per partition per commit interval, none while idle)
	Appended          int64 // entries appended to Redis
	DuplicatesSkipped int64 // records already in the stream (retry, zombie, restart)
	Commits           int64 // successful Kafka commits
	CommitErrors      int64
	RedisErrors       int64 // failed Redis calls (each retried with backoff)
	KafkaErrors       int64 // failed fetches and group joins (each retried with backoff)
	Losses            int64 // times Redis was found to have lost writes
	Trimmed           int64 // entries trimmed below the commit
	Rebalances        int64 // generations joined
	Pauses            int64 // times a partition was paused by backpressure
}

type counters struct {
	fetched, appended, dups, commits, commitErrs, redisErrs, kafkaErrs, losses, trimmed, rebalances, pauses, observations atomic.Int64
}

func (c *counters) snapshot() Counters {
	return Counters{
		Fetched: c.fetched.Load(), Appended: c.appended.Load(), DuplicatesSkipped: c.dups.Load(), Observations: c.observations.Load(),
		Commits: c.commits.Load(), CommitErrors: c.commitErrs.Load(), RedisErrors: c.redisErrs.Load(),
		KafkaErrors: c.kafkaErrs.Load(), Losses: c.losses.Load(), Trimmed: c.trimmed.Load(),
		Rebalances: c.rebalances.Load(), Pauses: c.pauses.Load(),
	}
}

// Stats is a snapshot of the ingest: counters, the configured topics and
// the assigned partitions.
type Stats struct {
	Counters
	// Topics holds one entry per configured topic, in the configured order:
	// whether it is bridged, and if not why (missing, not authorised).
	Topics     []TopicStatus
	Partitions []PartitionStatus
	// Backlog sums the backlogs of the assigned partitions.
	Backlog int64
	// FetchMemory is the memory fetched data holds now (in flight, fetched
	// ahead, being appended), of Config.FetchMemory; FetchMemoryPeak the
	// most it held.
	FetchMemory, FetchMemoryPeak int64
}

// registry holds the status of the assigned partitions and their backlogs,
// which the global cap sums. Entries are keyed by stream and owned by the
// partition that set them, so that a partition of an ended generation cannot
// remove its successor's entry.
type registry struct {
	mu    sync.Mutex
	parts map[string]regEntry
}

type regEntry struct {
	owner any
	st    PartitionStatus
}

func (r *registry) set(owner any, st PartitionStatus) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.parts == nil {
		r.parts = map[string]regEntry{}
	}
	r.parts[st.Stream] = regEntry{owner: owner, st: st}
}

func (r *registry) remove(stream string, owner any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.parts[stream]; ok && e.owner == owner {
		delete(r.parts, stream)
	}
}

// reserve grants up to want records of room under the global cap and counts
// them in the partition's backlog at once, so that partitions fetching at the
// same moment cannot overshoot the cap together. The partition's next set
// replaces the reservation with what it really appended.
func (r *registry) reserve(owner any, stream string, want, globalCap int64) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.parts == nil {
		r.parts = map[string]regEntry{}
	}
	var sum int64
	for _, e := range r.parts {
		sum += e.st.Backlog
	}
	grant := max(0, min(want, globalCap-sum))
	e := r.parts[stream]
	e.owner = owner
	e.st.Stream = stream
	e.st.Backlog += grant
	r.parts[stream] = e
	return grant
}

func (r *registry) backlog() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var n int64
	for _, e := range r.parts {
		n += e.st.Backlog
	}
	return n
}

func (r *registry) list() []PartitionStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]PartitionStatus, 0, len(r.parts))
	for _, e := range r.parts {
		out = append(out, e.st)
	}
	return out
}
