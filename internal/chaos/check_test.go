package chaos

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func at(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }

func fault(kind Kind, target string, start, end float64) FaultResult {
	return FaultResult{Fault: Fault{Kind: kind}, Target: target, Start: at(start), End: at(end)}
}

func dl(s float64, p int, off int64, n int64, worker string) Delivery {
	return Delivery{At: at(s), Partition: p, Offset: off, Seq: off*10 + int64(p), Deliveries: n, Worker: worker}
}

func TestCause(t *testing.T) {
	faults := []FaultResult{
		fault(WorkerKill, "worker-1", 10, 11),
		fault(RedisEmpty, "redis", 20, 21),
		fault(RedisCut, "redis-net", 30, 30),
		fault(WorkerStop, "worker-2", 40, 45),
		fault(IngestKill, "ingest-1", 50, 51),
		fault(RedisOld, "redis", 60, 61),
		fault(WorkerStop, "worker-2", 56, 61),
		{Fault: Fault{Kind: WorkerKill}, Target: "worker-3", Start: at(70), End: at(71), Skipped: "busy"},
		fault(WorkerTerm, "worker-1", 90, 91),
		fault(WorkerTerm, "worker-1", 100, 101),
		fault(RedisOld, "redis", 101, 102),
	}
	tests := []struct {
		name      string
		prev, cur Delivery
		want      string
	}{
		{"worker killed before its ack", dl(9.9, 0, 5, 1, "worker-1"), dl(16, 0, 5, 2, "worker-2"), "worker-kill"},
		{"another worker's kill explains nothing", dl(9.9, 0, 5, 1, "worker-2"), dl(16, 0, 5, 2, "worker-1"), ""},
		{"new entry after Redis came back empty", dl(19, 0, 5, 1, "worker-1"), dl(23, 0, 5, 1, "worker-2"), "redis-empty"},
		{"new entry after an old snapshot", dl(59, 0, 5, 1, "worker-1"), dl(63, 0, 5, 1, "worker-1"), "redis-old"},
		{"redelivery after Redis came back empty", dl(19, 0, 5, 2, "worker-1"), dl(23, 0, 5, 3, "worker-2"), "redis-empty"},
		{"ack lost on a cut connection", dl(29.9, 0, 5, 1, "worker-1"), dl(36, 0, 5, 2, "worker-2"), "redis-cut"},
		{"ack retried just after the cut", dl(31.5, 0, 5, 1, "worker-1"), dl(36, 0, 5, 2, "worker-2"), "redis-cut"},
		{"paused worker held it", dl(39.9, 0, 5, 1, "worker-2"), dl(44, 0, 5, 2, "worker-1"), "worker-stop"},
		{"paused worker finished its stale copy", dl(42, 0, 5, 2, "worker-1"), dl(45.1, 0, 5, 1, "worker-2"), "worker-stop (stale copy finished after SIGCONT)"},
		{"an ingest crash never explains a duplicate", dl(49, 0, 5, 1, "worker-1"), dl(53, 0, 5, 1, "worker-2"), ""},
		{"a skipped fault explains nothing", dl(69, 0, 5, 1, "worker-3"), dl(75, 0, 5, 2, "worker-1"), ""},
		{"no fault at all", dl(80, 0, 5, 1, "worker-1"), dl(81, 0, 5, 2, "worker-2"), ""},
		{"fresh entry after an old snapshot, read by a worker just resumed", dl(59, 0, 5, 1, "worker-1"), dl(61.5, 0, 5, 1, "worker-2"), "redis-old"},
		{"a paused worker's old copy and the new entry, both after the restore", dl(61.2, 0, 5, 1, "worker-2"), dl(61.3, 0, 5, 1, "worker-2"), "redis-old"},
		{"a graceful stop should not duplicate", dl(89, 0, 5, 1, "worker-1"), dl(95, 0, 5, 2, "worker-2"), "worker-term " + UnexpectedCause},
		{"Redis loss before a graceful stop", dl(99, 0, 5, 1, "worker-1"), dl(103, 0, 5, 2, "worker-2"), "redis-old"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Cause(tt.prev, tt.cur, faults); got != tt.want {
				t.Errorf("Cause = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	faults := []FaultResult{fault(WorkerKill, "worker-1", 10, 11), fault(RedisEmpty, "redis", 20, 21)}
	in := CheckInput{
		Began:     t0,
		LogEnd:    []int64{4, 3},
		Committed: []int64{4, 2},
		Deliveries: []Delivery{
			dl(1, 0, 0, 1, "worker-1"), dl(1, 0, 1, 1, "worker-1"), dl(9, 0, 2, 1, "worker-1"),
			dl(15, 0, 2, 2, "worker-2"), // worker-1 died before acking 2
			dl(2, 1, 0, 1, "worker-2"),
			dl(22, 1, 0, 1, "worker-2"), // Redis lost it: a new entry
			dl(35, 1, 0, 1, "worker-2"), // the copy before it was within 10 s of the loss
			dl(45, 1, 0, 1, "worker-2"), // nothing explains this one
		},
		// partition 0 offset 3: dead-lettered and still there; partition 1
		// offset 1: dead-lettered, erased; offset 2: never seen.
		DeadSeen:  map[pOff]time.Time{{0, 3}: at(5), {1, 1}: at(6)},
		DeadAtEnd: map[pOff]bool{{0, 3}: true},
		Produced:  7,
		ProducedAt: map[int64]time.Time{
			0: at(0), 10: at(0), 20: at(0), 30: at(0), 1: at(0), 11: at(0), 21: at(0), 99: at(0),
		},
		Faults: faults,
	}
	o := Check(in)
	if o.Records != 7 || o.Handled != 4 || o.Deliveries != 8 {
		t.Errorf("records %d handled %d deliveries %d, want 7 4 8", o.Records, o.Handled, o.Deliveries)
	}
	if o.Lost != 2 || o.DeadErased != 1 || o.DeadLetters != 1 {
		t.Errorf("lost %d (erased %d), dead letters %d; want 2 (1), 1; samples %v", o.Lost, o.DeadErased, o.DeadLetters, o.LostSamples)
	}
	// Handled sequence numbers: 0, 10, 20, 1. Never handled: 30 (dead
	// letter), 11, 21, 99.
	if o.SeqLost != 4 {
		t.Errorf("SeqLost %d, want 4", o.SeqLost)
	}
	want := map[string]int{"worker-kill": 1, "redis-empty": 2, "unexplained": 1}
	if o.Duplicates != 4 || !reflect.DeepEqual(o.DupCauses, want) {
		t.Errorf("duplicates %d %v, want 4 %v", o.Duplicates, o.DupCauses, want)
	}
	if len(o.Unexplained) != 1 || !strings.Contains(o.Unexplained[0], "partition 1 offset 0") {
		t.Errorf("unexplained %v", o.Unexplained)
	}
	if o.FinalOK || !strings.Contains(o.FinalNote, "p1 2/3") {
		t.Errorf("final ok %v note %q, want not ok on p1", o.FinalOK, o.FinalNote)
	}
	if o.Ok() {
		t.Error("Ok() = true for a run that lost records")
	}
}

func TestCheckClean(t *testing.T) {
	o := Check(CheckInput{Began: t0, LogEnd: []int64{2}, Committed: []int64{2},
		Deliveries: []Delivery{dl(1, 0, 0, 1, "w"), dl(1, 0, 1, 1, "w")}})
	if !o.Ok() || o.Lost != 0 || o.Duplicates != 0 {
		t.Errorf("clean run: %+v", o)
	}
	// Kafka copies: the same sequence number at two offsets.
	o = Check(CheckInput{Began: t0, LogEnd: []int64{2}, Committed: []int64{2},
		Deliveries: []Delivery{{At: at(1), Offset: 0, Seq: 7, Deliveries: 1}, {At: at(1), Offset: 1, Seq: 7, Deliveries: 1}}})
	if o.KafkaCopies != 1 || o.Duplicates != 0 {
		t.Errorf("kafka copies %d duplicates %d, want 1 0", o.KafkaCopies, o.Duplicates)
	}
}

func TestRecovery(t *testing.T) {
	samples := []Sample{
		{At: at(1), Committed: []int64{5, 5}},
		{At: at(2), Committed: []int64{10, 3}},
		{At: at(3), Committed: []int64{10, 8}},
		{At: at(4), Committed: []int64{12, 9}},
	}
	if got, ok := Recovery(samples, at(1.5), []int64{10, 8}); !ok || !got.Equal(at(3)) {
		t.Errorf("Recovery = %v %v, want t+3", got, ok)
	}
	if _, ok := Recovery(samples, at(1.5), []int64{10, 10}); ok {
		t.Error("Recovery found a sample that never reached the point")
	}
	// Samples before the fault do not count, even if they were past it.
	if got, ok := Recovery(samples, at(2.5), []int64{5, 5}); !ok || !got.Equal(at(3)) {
		t.Errorf("Recovery from t+2.5 = %v, want t+3", got)
	}
}

func TestScheduleSeeded(t *testing.T) {
	c := ScheduleConfig{Seed: 42, Duration: time.Minute, Faults: 30, Kinds: AllKinds, Ingests: 3, Workers: 3}
	a, b := NewSchedule(c), NewSchedule(c)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("the same seed gave two schedules")
	}
	c.Seed = 43
	if reflect.DeepEqual(a, NewSchedule(c)) {
		t.Fatal("seeds 42 and 43 gave the same schedule")
	}
	if len(a) != 30 {
		t.Fatalf("%d faults, want 30", len(a))
	}
	kinds := map[Kind]bool{}
	for i, f := range a {
		if i > 0 && f.At < a[i-1].At {
			t.Errorf("not sorted: %v after %v", f.At, a[i-1].At)
		}
		if f.At < 0 || f.At >= time.Minute {
			t.Errorf("fault at %v outside the schedule", f.At)
		}
		if f.Target < 0 || f.Target >= 3 {
			t.Errorf("target %d", f.Target)
		}
		if f.Hold > 10*time.Second {
			t.Errorf("hold %v above the default maximum", f.Hold)
		}
		kinds[f.Kind] = true
	}
	if len(kinds) < 8 {
		t.Errorf("only %d kinds in 30 faults: %v", len(kinds), kinds)
	}
	for _, f := range a {
		t.Log(f.String())
	}
}

func TestParseKinds(t *testing.T) {
	if ks, err := ParseKinds("all"); err != nil || len(ks) != len(AllKinds) {
		t.Errorf("all: %v %v", ks, err)
	}
	if ks, err := ParseKinds("worker-kill, none"); err != nil || !reflect.DeepEqual(ks, []Kind{WorkerKill, None}) {
		t.Errorf("worker-kill,none: %v %v", ks, err)
	}
	if _, err := ParseKinds("worker-kill,explode"); err == nil || !strings.Contains(err.Error(), "explode") {
		t.Errorf("unknown kind: err %v", err)
	}
}

func TestUpdateDoc(t *testing.T) {
	path := filepath.Join(t.TempDir(), "reliability.md")
	head := "# Reliability\n\nintro\n\n" + docBegin + "\n" + docEnd + "\n\ntail\n"
	if err := os.WriteFile(path, []byte(head), 0o644); err != nil {
		t.Fatal(err)
	}
	rep := func(seed uint64, lost int) *Report {
		return &Report{Mode: ModeSchedule, Seed: seed, Duration: time.Minute, Profile: "fast", Command: "scripts/chaos.sh --seed 1",
			Began: t0, Results: []FaultResult{fault(WorkerKill, "worker-1", 1, 2)}, Outcome: &Outcome{Lost: lost, FinalOK: true}}
	}
	for _, r := range []*Report{rep(1, 0), rep(2, 0), rep(1, 3)} {
		if err := UpdateDoc(path, r); err != nil {
			t.Fatal(err)
		}
	}
	b, _ := os.ReadFile(path)
	doc := string(b)
	if n := strings.Count(doc, "### Schedule seed 1,"); n != 1 {
		t.Errorf("seed 1 section %d times, want 1 (replaced):\n%s", n, doc)
	}
	// The newer seed-1 run (3 lost) replaced the older one; seed 2 kept.
	if !strings.Contains(doc, "**Lost: 3**") || strings.Count(doc, "**Lost: 0**") != 1 {
		t.Errorf("seed 1 section not replaced by the newer run:\n%s", doc)
	}
	if !strings.Contains(doc, "### Schedule seed 2,") || !strings.HasPrefix(doc, "# Reliability\n\nintro\n") || !strings.HasSuffix(doc, docEnd+"\n\ntail\n") {
		t.Errorf("document around the sections damaged:\n%s", doc)
	}
}

func TestCheckPoison(t *testing.T) {
	// Offsets 1 and 2 are poison: 1 is in a dead-letter stream at the end,
	// 2 was dead-lettered and then erased (a Redis restart): lost.
	o := Check(CheckInput{Began: t0, LogEnd: []int64{3}, Committed: []int64{3},
		Deliveries: []Delivery{dl(1, 0, 0, 1, "w")},
		ProducedAt: map[int64]time.Time{0: at(0), 10: at(0), 20: at(0)},
		Poisoned:   map[pOff]int{{0, 1}: 5, {0, 2}: 5},
		PoisonSeqs: map[int64]bool{10: true, 20: true},
		DeadSeen:   map[pOff]time.Time{{0, 1}: at(3), {0, 2}: at(3)},
		DeadAtEnd:  map[pOff]bool{{0, 1}: true}})
	if o.Poison != 2 || o.DeadLetters != 1 || o.Lost != 1 || o.DeadErased != 1 || o.SeqLost != 0 {
		t.Errorf("poison %d dead letters %d lost %d erased %d seq lost %d, want 2 1 1 1 0; %v",
			o.Poison, o.DeadLetters, o.Lost, o.DeadErased, o.SeqLost, o.LostSamples)
	}
	if o.Ok() {
		t.Error("Ok() = true with an erased dead letter")
	}
}

func TestCheckDeadLetterInKafka(t *testing.T) {
	// Offset 1 was dead-lettered, erased from Redis by a restart, but the
	// ingest had exported it to Kafka: not lost.
	o := Check(CheckInput{Began: t0, LogEnd: []int64{2}, Committed: []int64{2},
		Deliveries:  []Delivery{dl(1, 0, 0, 1, "w")},
		DeadSeen:    map[pOff]time.Time{{0, 1}: at(3)},
		DeadInKafka: map[pOff]bool{{0, 1}: true}})
	if o.Lost != 0 || o.DeadLetters != 1 || o.DeadInKafka != 1 || !o.Ok() {
		t.Errorf("lost %d dead letters %d in Kafka %d ok %v, want 0 1 1 true", o.Lost, o.DeadLetters, o.DeadInKafka, o.Ok())
	}
}

func TestLedgerPrefixSkipsDeadLetters(t *testing.T) {
	l := NewLedger("t")
	for _, off := range []int64{0, 1, 3, 4} {
		l.Record(Delivery{Partition: 0, Offset: off, Deliveries: 1})
	}
	if got := l.Prefix(0); got != 2 {
		t.Fatalf("prefix %d, want 2", got)
	}
	l.mu.Lock()
	l.dead[pOff{0, 2}] = t0
	l.advance(0, l.parts[0])
	l.mu.Unlock()
	if got := l.Prefix(0); got != 5 {
		t.Errorf("prefix %d after offset 2 was dead-lettered, want 5", got)
	}
	if u := l.Unhandled(0, 0, 6, 10); len(u) != 1 || u[0] != 5 {
		t.Errorf("unhandled %v, want [5]", u)
	}
}
