package conformance

import (
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// Statuses of a rule.
const (
	Pass   = "pass"
	Fail   = "FAIL"
	NotRun = "not run"
)

// Report is the outcome of a conformance run.
type Report struct {
	Command           []string `json:"command"`
	Redis             string   `json:"redis"` // the URL, password hidden
	VisibilityTimeout string   `json:"visibility_timeout"`
	MaxDeliveries     int      `json:"max_deliveries"`

	Rules     []RuleResult     `json:"rules"`
	Scenarios []ScenarioResult `json:"scenarios"`
	// Figures are what the scenarios measured (timings), for notes.
	Figures []string `json:"figures"`
	// Dir holds the worker output and handler events ("" once removed).
	Dir string `json:"dir,omitempty"`

	mu sync.Mutex
}

// RuleResult is the outcome of one rule: Pass when every check passed, Fail
// when one failed, NotRun when no scenario that checks it ran.
type RuleResult struct {
	ID        string   `json:"id"`
	Title     string   `json:"title"`
	Status    string   `json:"status"`
	Scenarios []string `json:"scenarios"`
	Failures  []string `json:"failures,omitempty"`
}

// ScenarioResult is one scenario run: its duration, and what stopped it
// early, if anything.
type ScenarioResult struct {
	Name string        `json:"name"`
	Took time.Duration `json:"took_ns"`
	Err  string        `json:"error,omitempty"`
}

func newReport(cfg Config) *Report {
	r := &Report{Command: cfg.Command, Redis: redact(cfg.RedisURL),
		VisibilityTimeout: cfg.VisibilityTimeout.String(), MaxDeliveries: cfg.MaxDeliveries}
	for _, rule := range Rules {
		r.Rules = append(r.Rules, RuleResult{ID: rule.ID, Title: rule.Title, Status: NotRun})
	}
	return r
}

func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

func (r *Report) rule(id string) *RuleResult {
	for i := range r.Rules {
		if r.Rules[i].ID == id {
			return &r.Rules[i]
		}
	}
	panic("conformance: unknown rule " + id)
}

func (r *Report) pass(id, scenario string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rr := r.rule(id)
	if rr.Status == NotRun {
		rr.Status = Pass
	}
	if !slices.Contains(rr.Scenarios, scenario) {
		rr.Scenarios = append(rr.Scenarios, scenario)
	}
}

func (r *Report) fail(id, scenario, format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rr := r.rule(id)
	rr.Status = Fail
	if !slices.Contains(rr.Scenarios, scenario) {
		rr.Scenarios = append(rr.Scenarios, scenario)
	}
	if len(rr.Failures) < 20 {
		rr.Failures = append(rr.Failures, scenario+": "+fmt.Sprintf(format, args...))
	}
}

// setScenario records the result of the i-th scenario run.
func (r *Report) setScenario(i int, res ScenarioResult) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Scenarios[i] = res
}

func (r *Report) addFigure(f string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Figures = append(r.Figures, f)
}

// Passed reports whether no rule failed and at least one passed.
func (r *Report) Passed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	any := false
	for _, rr := range r.Rules {
		if rr.Status == Fail {
			return false
		}
		any = any || rr.Status == Pass
	}
	return any
}

// Status returns the status of a rule.
func (r *Report) Status(id string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rule(id).Status
}

// Print writes the table of rules, then the failures and figures.
func (r *Report) Print(w io.Writer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintf(w, "worker: %s\nredis: %s, visibility timeout %s, max deliveries %d\n\n",
		strings.Join(r.Command, " "), r.Redis, r.VisibilityTimeout, r.MaxDeliveries)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "rule\tstatus\twhat\tscenarios")
	npass, nfail := 0, 0
	for _, rr := range r.Rules {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", rr.ID, rr.Status, rr.Title, strings.Join(rr.Scenarios, ","))
		switch rr.Status {
		case Pass:
			npass++
		case Fail:
			nfail++
		}
	}
	tw.Flush()
	for _, rr := range r.Rules {
		for _, f := range rr.Failures {
			fmt.Fprintf(w, "\n%s %s: %s", rr.ID, Fail, f)
		}
	}
	if len(r.Figures) > 0 {
		fmt.Fprintf(w, "\n\nfigures:\n")
		for _, f := range r.Figures {
			fmt.Fprintf(w, "  %s\n", f)
		}
	}
	fmt.Fprintf(w, "\nrules: %d pass, %d FAIL, %d not run", npass, nfail, len(r.Rules)-npass-nfail)
	if r.Dir != "" {
		fmt.Fprintf(w, " (worker output and handler events in %s)", r.Dir)
	}
	fmt.Fprintln(w)
}
