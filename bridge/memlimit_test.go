package bridge

import (
	"log/slog"
	"math"
	"runtime"
	"runtime/debug"
	"testing"
)

// The soft memory limit Run sets (issue 10 memory; from the break-it review
// R-final, whose two findings these tests reproduced before the fix).

// TestMemoryLimitCoversEveryIngest: two Ingests in one process (a library
// user bridging two clusters, or two groups) each budget FetchMemory for
// fetched data. The first sets the limit to its own budget + headroom; the
// second sees a limit already set, takes it for the program's own, and
// leaves it: the process runs with a limit below the two budgets together,
// and with both backlogged the GC runs continuously (the limit is soft: up
// to about half the CPU) instead of letting the heap hold what the budgets
// allow. Fixed: the ingests of a process share one limit that counts each
// one's budget, and each takes its share out when its Run returns.
func TestMemoryLimitCoversEveryIngest(t *testing.T) {
	t.Setenv("GOMEMLIMIT", "")
	prev := debug.SetMemoryLimit(math.MaxInt64)
	t.Cleanup(func() { debug.SetMemoryLimit(prev) })

	a := &Ingest{log: slog.New(slog.DiscardHandler), cfg: Config{FetchMemory: 256 << 20}}
	b := &Ingest{log: slog.New(slog.DiscardHandler), cfg: Config{FetchMemory: 512 << 20}}
	releaseA := a.setMemoryLimit()
	afterA := debug.SetMemoryLimit(-1)
	releaseB := b.setMemoryLimit()
	afterB := debug.SetMemoryLimit(-1)
	need := a.cfg.FetchMemory + b.cfg.FetchMemory + memoryHeadroom
	t.Logf("limit after the 1st ingest (fetch 256 MiB): %d MiB; after the 2nd (fetch 512 MiB): %d MiB; the two fetch budgets + headroom: %d MiB",
		afterA>>20, afterB>>20, need>>20)
	if afterA != a.cfg.FetchMemory+memoryHeadroom {
		t.Fatalf("the first ingest set %d, want %d", afterA, a.cfg.FetchMemory+memoryHeadroom)
	}
	if afterB < need {
		t.Errorf("WRONG: two ingests in one process run under a soft memory limit of %d MiB, below their fetch budgets + headroom (%d MiB): the second ingest took the first one's limit for the program's own", afterB>>20, need>>20)
	}
	releaseB()
	if got := debug.SetMemoryLimit(-1); got != afterA {
		t.Errorf("after the 2nd ingest's Run returned: limit %d MiB, want the 1st one's %d MiB", got>>20, afterA>>20)
	}
	releaseA()
	if got := debug.SetMemoryLimit(-1); got != math.MaxInt64 {
		t.Errorf("after both returned: limit %d, want none", got)
	}
}

// TestMemoryLimitProgramsOwnWins: a limit the program set itself
// (debug.SetMemoryLimit in a library user's main, GOMEMLIMIT=<n>, or
// GOMEMLIMIT=off, which means no limit) is never replaced. Held up.
func TestMemoryLimitProgramsOwnWins(t *testing.T) {
	prev := debug.SetMemoryLimit(math.MaxInt64)
	t.Cleanup(func() { debug.SetMemoryLimit(prev) })
	in := &Ingest{log: slog.New(slog.DiscardHandler), cfg: Config{FetchMemory: 256 << 20}}

	t.Setenv("GOMEMLIMIT", "")
	debug.SetMemoryLimit(1 << 30) // the library user's own
	in.setMemoryLimit()
	if got := debug.SetMemoryLimit(-1); got != 1<<30 {
		t.Errorf("a library user's limit of 1 GiB was replaced by %d", got)
	}

	debug.SetMemoryLimit(math.MaxInt64) // the runtime's reading of GOMEMLIMIT=off
	t.Setenv("GOMEMLIMIT", "off")
	in.setMemoryLimit()
	if got := debug.SetMemoryLimit(-1); got != math.MaxInt64 {
		t.Errorf("GOMEMLIMIT=off: the ingest set a limit of %d", got)
	}
	t.Setenv("GOMEMLIMIT", "")
	in.setMemoryLimit()
	got := debug.SetMemoryLimit(-1)
	t.Logf("user limit kept; GOMEMLIMIT=off kept no limit; no limit at all: the ingest set %d MiB", got>>20)
	if got != in.cfg.FetchMemory+memoryHeadroom {
		t.Errorf("no limit and no GOMEMLIMIT: the ingest set %d, want %d", got, in.cfg.FetchMemory+memoryHeadroom)
	}
}

// TestMemoryLimitCoversBatchMax: --fetch-batch-max-bytes lets one
// record batch be bridged "even when larger than FetchMemory, which it then
// exceeds while the batch is appended" (Config.FetchBatchMaxBytes; per
// partition being appended, config.go), but the soft limit is FetchMemory +
// 64 MiB whatever FetchBatchMaxBytes is. A batch the configuration allows
// then puts the live heap above the limit, and the runtime collects
// continuously while it is appended. The test holds such a batch live under
// the limit the ingest sets and counts the collections of the same
// allocation churn with and without that limit. Fixed: the limit counts
// what FetchBatchMaxBytes lets one batch exceed FetchMemory by.
func TestMemoryLimitCoversBatchMax(t *testing.T) {
	t.Setenv("GOMEMLIMIT", "")
	prev := debug.SetMemoryLimit(math.MaxInt64)
	t.Cleanup(func() { debug.SetMemoryLimit(prev) })
	in := &Ingest{log: slog.New(slog.DiscardHandler), cfg: Config{FetchMemory: 64 << 20, FetchBatchMaxBytes: 256 << 20}}
	in.setMemoryLimit()
	limit := debug.SetMemoryLimit(-1)

	churn := func() uint32 {
		batch := make([]byte, in.cfg.FetchBatchMaxBytes) // one batch the config allows, decompressed
		for i := range batch {
			if i%4096 == 0 {
				batch[i] = 1
			}
		}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		var sink []byte
		for range 4096 { // 256 MiB of short-lived allocations (appends, encoding)
			sink = make([]byte, 64<<10)
			sink[0] = 1
		}
		runtime.ReadMemStats(&after)
		runtime.KeepAlive(batch)
		runtime.KeepAlive(sink)
		return after.NumGC - before.NumGC
	}
	withLimit := churn()
	debug.SetMemoryLimit(math.MaxInt64)
	without := churn()
	t.Logf("fetch memory 64 MiB, batch max 256 MiB: soft limit %d MiB; GCs during 256 MiB of churn with one allowed batch live: %d under the ingest's limit, %d without it",
		limit>>20, withLimit, without)
	if limit < in.cfg.FetchMemory+in.cfg.FetchBatchMaxBytes {
		t.Errorf("WRONG: the soft memory limit (%d MiB) is below FetchMemory + FetchBatchMaxBytes (%d MiB): a batch the configuration allows runs the GC continuously (%d collections vs %d)",
			limit>>20, (in.cfg.FetchMemory+in.cfg.FetchBatchMaxBytes)>>20, withLimit, without)
	}
}
