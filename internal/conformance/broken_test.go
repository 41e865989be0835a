package conformance_test

import (
	"path/filepath"
	"regexp"
	"sync"
	"testing"

	"github.com/kbridge/kbridge/internal/conformance"
)

// TestBrokenWorkers: a worker written from docs/wire.md alone
// (testdata/docworker.py, by the reviewer of issue 9) passes the kit's
// scenarios; with one deliberate violation at a time (BREAK) it fails
// exactly the rule that holds it, in the scenario that provokes it. Each
// variant runs only the scenarios that matter, all variants at once.
// (leasenonatomic is not among them: docs/wire.md says the kit cannot
// provoke that race.)
func TestBrokenWorkers(t *testing.T) {
	redisURL(t)
	need(t, pythonRedis(), "python3 with redis-py (pip install -r examples/python/requirements.txt)")
	t.Parallel()
	worker := filepath.Join(root(), "internal", "conformance", "testdata", "docworker.py")
	var wg sync.WaitGroup
	for _, tt := range []struct {
		name, brk, run string
		env            []string
		fail           []string
	}{
		// The control: nothing broken, offsets and timestamps written as
		// decimal strings in the events (as a JavaScript handler must).
		{name: "none", run: "^(version|decode|retry|ownership|reclaim|shutdown)$", env: []string{"NUMS=str"}},
		// Reads ahead, leaves what it did not start pending at SIGTERM, then
		// XGROUP DELCONSUMER drops those entries: W17 alone passed it, the
		// loss check fails it. (Entries handed back with unclaim.lua are
		// another consumer's, out of its reach.)
		{name: "plaindel", brk: "readahead,keepread,plaindel", run: "^shutdown$", fail: []string{"W20"}},
		// Counts retries itself: the handler sees deliveries 2, 3 while Redis says 1.
		{name: "localretry", brk: "localretry", run: "^retry$", fail: []string{"W8"}},
		// Dead-letters without the ownership check; the kit takes the entry
		// right after a lease extension, so the worker does not see the loss first.
		{name: "dlqnocheck", brk: "dlqnocheck", run: "^ownership$", fail: []string{"W10"}},
		// Checks the version only at start-up.
		{name: "versiononce", brk: "versiononce", run: "^version$", fail: []string{"W19"}},
		// Reclaims what is idle for 0.6 V.
		{name: "shortvt", brk: "shortvt", run: "^reclaim$", fail: []string{"W13"}},
		// Acknowledges before handling: the SIGKILLed worker's record is lost.
		{name: "ackfirst", brk: "ackfirst", run: "^sigkill$", fail: []string{"W12", "W20"}},
	} {
		// All at once, in goroutines rather than parallel subtests: they
		// mostly wait, and go test runs only GOMAXPROCS parallel tests.
		wg.Add(1)
		go func() {
			defer wg.Done()
			t.Run(tt.name, func(t *testing.T) {
				cmd := append([]string{"env", "BREAK=" + tt.brk}, tt.env...)
				cmd = append(cmd, "python3", worker)
				runKit(t, conformance.Config{Command: cmd, Run: regexp.MustCompile(tt.run)}, tt.fail...)
			})
		}()
	}
	wg.Wait()
}
