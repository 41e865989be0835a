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
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
)

// simTest marks a simulation: it is skipped under -race, and the only kind
// of test the KBRIDGE_SIM_ONLY=1 pass runs. Call it as the first statement
// of the test function's own body: simTests finds the call there. Called
// anywhere else (a helper, a subtest, later in the body), it would skip the
// test under -race while the other pass did not run it either: it fails
// the test instead.
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

// TestMain: with KBRIDGE_SIM_ONLY=1 only the simulations run: -run is
// narrowed to them. Which is which comes from the source (simTests), not
// from a list: a test that skips under -race is one that this pass runs,
// and a new test runs under -race unless it says simTest.
func TestMain(m *testing.M) {
	if os.Getenv("KBRIDGE_SIM_ONLY") == "1" {
		if err := simOnly(); err != nil {
			fmt.Fprintln(os.Stderr, "KBRIDGE_SIM_ONLY=1:", err)
			os.Exit(2)
		}
	}
	os.Exit(m.Run())
}

// simOnly sets -run to the simulations the user's -run selects (its first
// element, the top-level tests; the subtest elements after it are kept),
// and -bench to none (the benchmarks run in the other pass). The user's
// -skip is left as it is: it may name subtests, which an alternation with
// a list of ours could not.
func simOnly() error {
	if raceEnabled {
		return fmt.Errorf("the simulations skip under -race: this pass would run nothing (build without -race)")
	}
	flag.Parse()
	sims, _, err := simTests(".")
	if err != nil {
		return err
	}
	if len(sims) == 0 {
		return fmt.Errorf("no test of the package calls simTest: nothing to run")
	}
	parts := splitTestPattern(flag.Lookup("test.run").Value.String())
	keep := sims
	if len(parts) > 0 && parts[0] != "" {
		re, err := regexp.Compile(parts[0])
		if err != nil {
			return fmt.Errorf("-run: %w", err)
		}
		keep = slices.DeleteFunc(slices.Clone(sims), func(n string) bool { return !re.MatchString(n) })
	}
	run := "^$" // none selected: go test says "no tests to run"
	if len(keep) > 0 {
		run = "^(" + strings.Join(keep, "|") + ")$"
	}
	if len(parts) > 1 {
		run += "/" + strings.Join(parts[1:], "/")
	}
	if err := flag.Set("test.run", run); err != nil {
		return err
	}
	return flag.Set("test.bench", "")
}

// splitTestPattern splits a -run pattern at its slashes that are outside
// brackets and parentheses (one element per subtest level), as go test
// does; "" gives none.
func splitTestPattern(p string) []string {
	if p == "" {
		return nil
	}
	var out []string
	depth, inClass, start := 0, false, 0
	for i := 0; i < len(p); i++ {
		switch c := p[i]; {
		case c == '\\':
			i++ // an escaped character
		case inClass:
			inClass = c != ']'
		case c == '[':
			inClass = true
		case c == '(':
			depth++
		case c == ')':
			depth--
		case c == '/' && depth == 0:
			out = append(out, p[start:i])
			start = i + 1
		}
	}
	return append(out, p[start:])
}

// simTests reads the package's _test.go files in dir and splits its tests,
// examples and fuzz tests into the simulations (Test functions whose first
// statement is simTest(t)) and the others. Files of other build targets are
// read too: a name that is not in the binary does no harm in -run.
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

// callsSimTest reports whether body's first statement is simTest(t): the
// rule, so that nothing of a simulation runs before it skips under -race,
// and no subtest alone is one. A call elsewhere makes simTest fail the test.
func callsSimTest(body *ast.BlockStmt) bool {
	if len(body.List) == 0 {
		return false
	}
	st, ok := body.List[0].(*ast.ExprStmt)
	if !ok {
		return false
	}
	c, ok := st.X.(*ast.CallExpr)
	if !ok {
		return false
	}
	id, ok := c.Fun.(*ast.Ident)
	return ok && id.Name == "simTest"
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

// TestSplitTestPattern: -run's elements as go test splits them, so that
// KBRIDGE_SIM_ONLY=1 keeps the user's subtest elements.
func TestSplitTestPattern(t *testing.T) {
	for p, want := range map[string][]string{
		"":                  nil,
		"TestA":             {"TestA"},
		"TestA/b/c":         {"TestA", "b", "c"},
		"Test(A|B/x)/y":     {"Test(A|B/x)", "y"},
		"Test[/]A/y":        {"Test[/]A", "y"},
		`Test\/A/y`:         {`Test\/A`, "y"},
		"^TestA$/ra0-idle1": {"^TestA$", "ra0-idle1"},
	} {
		if got := splitTestPattern(p); !slices.Equal(got, want) {
			t.Errorf("splitTestPattern(%q) = %q, want %q", p, got, want)
		}
	}
}
