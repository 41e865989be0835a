package chaos

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
)

// Kind is a type of fault.
type Kind string

// The faults the harness injects. Hold is how long the fault lasts: the
// SIGSTOP, the outage, the time a killed process or a stopped server stays
// down before it is started again (an orchestrator's restart delay).
const (
	IngestKill  Kind = "ingest-kill"  // SIGKILL an ingest, start it again after Hold
	IngestStop  Kind = "ingest-stop"  // SIGSTOP an ingest for Hold, then SIGCONT
	IngestTerm  Kind = "ingest-term"  // SIGTERM an ingest, start it again after Hold
	WorkerKill  Kind = "worker-kill"  // SIGKILL a worker, start it again after Hold
	WorkerStop  Kind = "worker-stop"  // SIGSTOP a worker for Hold, then SIGCONT
	WorkerTerm  Kind = "worker-term"  // SIGTERM a worker, start it again after Hold
	RedisEmpty  Kind = "redis-empty"  // crash Redis, start it with no data after Hold
	RedisSaved  Kind = "redis-saved"  // SHUTDOWN SAVE, start it again (nothing lost)
	RedisOld    Kind = "redis-old"    // SAVE, Lag later crash Redis; it starts on that snapshot
	KafkaTerm   Kind = "kafka-term"   // stop the broker cleanly, start it after Hold
	KafkaKill   Kind = "kafka-kill"   // SIGKILL the broker, start it after Hold
	KafkaCut    Kind = "kafka-cut"    // reset every connection between kbridge and Kafka
	RedisCut    Kind = "redis-cut"    // reset every connection between kbridge and Redis
	KafkaDown   Kind = "kafka-down"   // refuse connections to Kafka for Hold
	RedisDown   Kind = "redis-down"   // refuse connections to Redis for Hold
	KafkaFreeze Kind = "kafka-freeze" // hold every byte to and from Kafka for Hold
	RedisFreeze Kind = "redis-freeze" // hold every byte to and from Redis for Hold
	None        Kind = "none"         // nothing: the baseline of the recovery time
)

// AllKinds lists every fault the random schedule may pick.
var AllKinds = []Kind{IngestKill, IngestStop, IngestTerm, WorkerKill, WorkerStop, WorkerTerm,
	RedisEmpty, RedisSaved, RedisOld, KafkaTerm, KafkaKill,
	KafkaCut, RedisCut, KafkaDown, RedisDown, KafkaFreeze, RedisFreeze}

// QuickKinds are AllKinds but the Kafka broker restarts, whose JVM takes
// tens of seconds to start: the faults of the quick (CI) seed.
var QuickKinds = []Kind{IngestKill, IngestStop, IngestTerm, WorkerKill, WorkerStop, WorkerTerm,
	RedisEmpty, RedisSaved, RedisOld, KafkaCut, RedisCut, KafkaDown, RedisDown, KafkaFreeze, RedisFreeze}

// ParseKinds parses a comma-separated list of kinds ("all" = AllKinds,
// "quick" = QuickKinds).
func ParseKinds(s string) ([]Kind, error) {
	switch s {
	case "", "all":
		return slices.Clone(AllKinds), nil
	case "quick":
		return slices.Clone(QuickKinds), nil
	}
	var out []Kind
	for _, f := range strings.Split(s, ",") {
		k := Kind(strings.TrimSpace(f))
		if k != None && !slices.Contains(AllKinds, k) {
			return nil, fmt.Errorf("unknown fault %q (known: %s, none)", k, kindList(AllKinds))
		}
		out = append(out, k)
	}
	return out, nil
}

func kindList(ks []Kind) string {
	s := make([]string, len(ks))
	for i, k := range ks {
		s[i] = string(k)
	}
	return strings.Join(s, ",")
}

// service is what a fault acts on; faults on a busy service are skipped.
func (k Kind) service() string {
	switch {
	case strings.HasPrefix(string(k), "ingest"):
		return "ingest"
	case strings.HasPrefix(string(k), "worker"):
		return "worker"
	case k == KafkaTerm || k == KafkaKill:
		return "kafka"
	case k == RedisEmpty || k == RedisSaved || k == RedisOld:
		return "redis"
	case strings.HasPrefix(string(k), "kafka"):
		return "kafka-net"
	case strings.HasPrefix(string(k), "redis"):
		return "redis-net"
	}
	return ""
}

// weight is how often the random schedule picks a kind: restarts of the
// servers take long (a JVM), so they are rarer.
func (k Kind) weight() int {
	switch k {
	case KafkaTerm, KafkaKill:
		return 1
	case RedisEmpty, RedisSaved, RedisOld:
		return 2
	}
	return 4
}

// Fault is one planned fault.
type Fault struct {
	At     time.Duration // after the start of the schedule
	Kind   Kind
	Target int           // which ingest or worker (index)
	Hold   time.Duration // see the Kind constants
	Lag    time.Duration // redis-old: how old the snapshot is
}

func (f Fault) String() string {
	s := fmt.Sprintf("%6.1fs %-12s", f.At.Seconds(), f.Kind)
	switch f.Kind.service() {
	case "ingest", "worker":
		s += fmt.Sprintf(" %s-%d", f.Kind.service(), f.Target+1)
	}
	if f.Hold > 0 {
		s += fmt.Sprintf(" hold=%v", f.Hold)
	}
	if f.Lag > 0 {
		s += fmt.Sprintf(" snapshot=%v old", f.Lag)
	}
	return s
}

// ScheduleConfig says what a random schedule holds.
type ScheduleConfig struct {
	Seed     uint64
	Duration time.Duration // faults are spread over [0, Duration)
	Faults   int           // how many
	Kinds    []Kind        // which kinds (weighted, see Kind.weight)
	Ingests  int
	Workers  int
	// MaxHold bounds the Hold of process and network faults (default 10s);
	// server restarts hold up to 3s.
	MaxHold time.Duration
}

// NewSchedule returns the faults of a seeded random schedule, sorted by
// time. The same config always gives the same schedule.
func NewSchedule(c ScheduleConfig) []Fault {
	r := rand.New(rand.NewPCG(c.Seed, c.Seed^0x6b627269646765)) // "kbridge"
	maxHold := c.MaxHold
	if maxHold <= 0 {
		maxHold = 10 * time.Second
	}
	var bag []Kind
	for _, k := range c.Kinds {
		for range k.weight() {
			bag = append(bag, k)
		}
	}
	if len(bag) == 0 || c.Faults <= 0 || c.Duration <= 0 {
		return nil
	}
	hold := func(lo, hi time.Duration) time.Duration {
		ms := lo.Milliseconds() + r.Int64N(hi.Milliseconds()-lo.Milliseconds()+1)
		return time.Duration(ms) * time.Millisecond
	}
	out := make([]Fault, c.Faults)
	for i := range out {
		k := bag[r.IntN(len(bag))]
		f := Fault{At: time.Duration(r.Int64N(int64(c.Duration))).Round(100 * time.Millisecond), Kind: k}
		switch k.service() {
		case "ingest":
			f.Target = r.IntN(max(c.Ingests, 1))
		case "worker":
			f.Target = r.IntN(max(c.Workers, 1))
		}
		switch k {
		case IngestKill, IngestTerm, WorkerKill, WorkerTerm:
			f.Hold = hold(0, min(3*time.Second, maxHold))
		case IngestStop, WorkerStop, KafkaDown, RedisDown, KafkaFreeze, RedisFreeze:
			f.Hold = hold(500*time.Millisecond, maxHold)
		case RedisEmpty, RedisSaved, KafkaTerm, KafkaKill:
			f.Hold = hold(0, 3*time.Second)
		case RedisOld:
			f.Hold = hold(0, 3*time.Second)
			f.Lag = hold(time.Second, 10*time.Second)
		}
		out[i] = f
	}
	slices.SortStableFunc(out, func(a, b Fault) int { return int(a.At - b.At) })
	return out
}

// Profile returns the extra ingest and worker flags of a named profile:
// "defaults" (none: the defaults under test), "fast" (short session,
// heartbeat and visibility timeouts, so a quick run recovers in seconds), or
// "proposed" (the flags docs/reliability.md proposed, measured before they
// became the defaults on 2026-12-01; the same as "defaults" since, kept so the
// recorded commands still run).
func Profile(name string) (ingest, worker []string, err error) {
	switch name {
	case "defaults", "":
		return nil, nil, nil
	case "fast":
		return []string{"--session-timeout", "6s", "--heartbeat-interval", "1s", "--rebalance-timeout", "15s"},
			[]string{"--visibility-timeout", "5s"}, nil
	case "proposed":
		// The ingest wants rebalance ≥ heartbeat + 2 × the final commit
		// timeout (5s).
		return []string{"--session-timeout", "10s", "--heartbeat-interval", "1s", "--rebalance-timeout", "12s"},
			[]string{"--visibility-timeout", "10s"}, nil
	}
	return nil, nil, fmt.Errorf("--profile %q: want defaults, fast or proposed", name)
}
