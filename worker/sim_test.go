package worker

// The simulations (schedSim, holRig, p5Worker and the rigs built on them)
// drive a scheduler on one goroutine on a simulated clock: no Redis, no
// handler goroutines, and no real timer that fires during the test (the
// clock is far ahead of the real one, or retries are an hour of real time
// away, or nothing is retried). The race detector has nothing to find in
// them and makes them 5-10 times slower: under -race they took 879 s of the
// package's 1,019 s (2 cores, real Redis; ~1,110 s in CI), 115 s without
// it. simTest skips them under -race; scripts/test.sh runs them in a second
// pass without -race (KBRIDGE_SIM_ONLY=1 go test ./worker/), beside the
// -race one.

import (
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// simTest marks a simulation: it is skipped under -race, and the only kind
// of test the KBRIDGE_SIM_ONLY=1 pass runs. Call it first in the test
// function's own body: simTests finds the call there. Called from a helper,
// it would skip the test under -race while the other pass did not run it
// either: it fails the test instead.
func simTest(t *testing.T) {
	t.Helper()
	top, _, _ := strings.Cut(t.Name(), "/")
	if sims, err := simSet(); err != nil {
		t.Fatal(err)
	} else if !sims[top] {
		t.Fatalf("simTest is not called in %s's own body: KBRIDGE_SIM_ONLY=1 would not run it", top)
	}
	if raceEnabled {
		t.Skip("simulation on one goroutine (sim_test.go): runs without -race, KBRIDGE_SIM_ONLY=1 go test ./worker/ (scripts/test.sh does)")
	}
}

// simSet is simTests' simulations, read once.
var simSet = sync.OnceValues(func() (map[string]bool, error) {
	sims, _, err := simTests(".")
	set := map[string]bool{}
	for _, n := range sims {
		set[n] = true
	}
	return set, err
})

// TestMain: with KBRIDGE_SIM_ONLY=1 only the simulations run: every other
// test, example and fuzz test of the package is added to -skip. Which is
// which comes from the source (simTests), not from a list: a test that
// skips under -race is one that this pass runs, and a new test runs under
// -race unless it says simTest.
func TestMain(m *testing.M) {
	if os.Getenv("KBRIDGE_SIM_ONLY") == "1" {
		if err := simOnly(); err != nil {
			fmt.Fprintln(os.Stderr, "KBRIDGE_SIM_ONLY=1:", err)
			os.Exit(2)
		}
	}
	os.Exit(m.Run())
}

func simOnly() error {
	if raceEnabled {
		return fmt.Errorf("the simulations skip under -race: this pass would run nothing (build without -race)")
	}
	flag.Parse()
	sims, others, err := simTests(".")
	if err != nil {
		return err
	}
	if len(sims) == 0 {
		return fmt.Errorf("no test of the package calls simTest: nothing to run")
	}
	skip := "^(" + strings.Join(others, "|") + ")$"
	if user := flag.Lookup("test.skip").Value.String(); user != "" {
		// -skip splits its pattern at slashes (one per subtest level):
		// an alternation with ours would change what it means.
		if strings.Contains(user, "/") {
			return fmt.Errorf("-skip %q names subtests: not supported with KBRIDGE_SIM_ONLY=1", user)
		}
		skip = user + "|" + skip
	}
	return flag.Set("test.skip", skip)
}

// simTests reads the package's _test.go files in dir and splits its tests,
// examples and fuzz tests into the simulations (Test functions that call
// simTest) and the others. Files of other build targets are read too: a
// name that is not in the binary does no harm in -skip.
func simTests(dir string) (sims, others []string, err error) {
	files, err := filepath.Glob(filepath.Join(dir, "*_test.go"))
	if err != nil {
		return nil, nil, err
	}
	fset := token.NewFileSet()
	for _, f := range files {
		file, err := parser.ParseFile(fset, f, nil, parser.SkipObjectResolution)
		if err != nil {
			return nil, nil, err
		}
		for _, d := range file.Decls {
			fn, ok := d.(*ast.FuncDecl)
			if !ok || fn.Recv != nil || fn.Body == nil {
				continue
			}
			name := fn.Name.Name
			if !isTestName(name, "Test") && !isTestName(name, "Example") && !isTestName(name, "Fuzz") {
				continue
			}
			if isTestName(name, "Test") && callsSimTest(fn.Body) {
				sims = append(sims, name)
			} else {
				others = append(others, name)
			}
		}
	}
	slices.Sort(sims)
	slices.Sort(others)
	return sims, others, nil
}

// isTestName is go test's rule: prefix, then the end or a character that
// is not a lower-case letter (TestMain is not a test: m.Run does not run it).
func isTestName(name, prefix string) bool {
	if !strings.HasPrefix(name, prefix) || name == "TestMain" {
		return false
	}
	rest := name[len(prefix):]
	return rest == "" || !(rest[0] >= 'a' && rest[0] <= 'z')
}

func callsSimTest(body *ast.BlockStmt) bool {
	found := false
	ast.Inspect(body, func(n ast.Node) bool {
		if c, ok := n.(*ast.CallExpr); ok {
			if id, ok := c.Fun.(*ast.Ident); ok && id.Name == "simTest" {
				found = true
			}
		}
		return !found
	})
	return found
}

// TestSimTestsSplit: the split KBRIDGE_SIM_ONLY=1 relies on sees this
// package's simulations and its other tests (a parse that found nothing,
// or put everything on one side, would run nothing or everything).
func TestSimTestsSplit(t *testing.T) {
	sims, others, err := simTests(".")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(sims, "TestSchedSlowStreamShare") || !slices.Contains(others, "TestSimTestsSplit") ||
		!slices.Contains(others, "Example") || slices.Contains(others, "TestMain") {
		t.Errorf("simulations %v; others %v", sims, others)
	}
	for _, n := range sims {
		if slices.Contains(others, n) {
			t.Errorf("%s on both sides", n)
		}
	}
}
