package chaos

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"
)

// KindStats sums up the faults of one kind.
type KindStats struct {
	Kind             Kind
	Applied, Skipped int
	Failed           int             // the harness could not apply it
	Never            int             // applied, never recovered
	FromEnd, FromHit []time.Duration // recovery times, from the end of the fault and from its start
	CaughtUp         []time.Duration // from the end of the fault
	DuplicatesCaused int
}

// ByKind groups the results per kind, in the order of first appearance.
func (r *Report) ByKind() []*KindStats {
	var out []*KindStats
	idx := map[Kind]*KindStats{}
	for _, res := range r.Results {
		ks := idx[res.Kind]
		if ks == nil {
			ks = &KindStats{Kind: res.Kind}
			idx[res.Kind] = ks
			out = append(out, ks)
		}
		switch {
		case res.Skipped != "":
			ks.Skipped++
			continue
		case res.Err != "":
			ks.Failed++
			continue
		}
		ks.Applied++
		if res.Recovered.IsZero() {
			ks.Never++
		} else {
			ks.FromEnd = append(ks.FromEnd, max(res.Recovered.Sub(res.End), 0))
			ks.FromHit = append(ks.FromHit, res.Recovered.Sub(res.Start))
		}
		if !res.CaughtUp.IsZero() {
			ks.CaughtUp = append(ks.CaughtUp, res.CaughtUp.Sub(res.End))
		}
	}
	if r.Outcome != nil {
		for cause, n := range r.Outcome.DupCauses {
			k := Kind(strings.Fields(cause)[0])
			if ks := idx[k]; ks != nil {
				ks.DuplicatesCaused += n
			}
		}
	}
	return out
}

func medMax(ds []time.Duration) string {
	if len(ds) == 0 {
		return "–"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return fmt.Sprintf("%s / %s", secs(med), secs(s[len(s)-1]))
}

func secs(d time.Duration) string { return fmt.Sprintf("%.1f s", d.Seconds()) }

// Title names the run: the key of its section in docs/reliability.md.
func (r *Report) Title() string {
	switch r.Mode {
	case ModeIsolate:
		return fmt.Sprintf("Recovery per fault type, profile %s", r.Profile)
	}
	return fmt.Sprintf("Schedule seed %d, %v, profile %s", r.Seed, r.Duration, r.Profile)
}

// Markdown renders the report as a section of docs/reliability.md.
func (r *Report) Markdown() string {
	var b strings.Builder
	o := r.Outcome
	verdict := "PASS"
	if o == nil || !o.Ok() || r.DrainErr != "" || len(r.Unexpected) > 0 || badShutdowns(r.Shutdowns) > 0 {
		verdict = "FAIL"
	}
	fmt.Fprintf(&b, "### %s\n\n", r.Title())
	rev := ""
	if r.Revision != "" {
		rev = ", kbridge " + r.Revision
	}
	fmt.Fprintf(&b, "`%s` — %s%s, %s; %d partitions, %d ingests, %d workers (`kbridge worker --http`), %d records/s. Verdict: **%s**.\n\n",
		r.Command, r.Began.UTC().Format("2006-01-02 15:04 UTC"), rev, machine(), r.Partitions, r.Ingests, r.Workers, r.Rate, verdict)
	fmt.Fprintf(&b, "Ingest flags: `%s`; worker flags: `%s`.\n\n", argsOrDefault(r.IngestArgs), argsOrDefault(r.WorkerArgs))
	b.WriteString("| fault | applied | skipped | recovered: median / max from the end of the fault | from the fault | lag back down (from the end) | never recovered | duplicates caused |\n")
	b.WriteString("| --- | ---: | ---: | --- | --- | --- | ---: | ---: |\n")
	for _, ks := range r.ByKind() {
		fmt.Fprintf(&b, "| %s | %d | %d | %s | %s | %s | %d | %d |\n", ks.Kind, ks.Applied, ks.Skipped+ks.Failed,
			medMax(ks.FromEnd), medMax(ks.FromHit), medMax(ks.CaughtUp), ks.Never, ks.DuplicatesCaused)
	}
	b.WriteString("\n")
	if o != nil {
		fmt.Fprintf(&b, "- Records: %d in the topic (%d acknowledged to the producer, %d extra copies from its retries), %d handled, %d handler calls.\n",
			o.Records, o.Produced, o.KafkaCopies, o.Handled, o.Deliveries)
		fmt.Fprintf(&b, "- **Lost: %d**", o.Lost)
		if o.DeadErased > 0 {
			fmt.Fprintf(&b, " (%d of them dead letters erased by a Redis restart)", o.DeadErased)
		}
		fmt.Fprintf(&b, "; acknowledged records never handled: %d; dead letters at the end: %d (%d of them in the Kafka dead-letter topic)", o.SeqLost, o.DeadLetters, o.DeadInKafka)
		if o.Poison > 0 {
			fmt.Fprintf(&b, " (%d poison records, which fail on every delivery)", o.Poison)
		}
		b.WriteString(".\n")
		fmt.Fprintf(&b, "- Duplicates: %d%s.\n", o.Duplicates, causes(o.DupCauses))
		fmt.Fprintf(&b, "- Commits (%d samples, %d failed while a server was down): backwards %d, beyond the log end %d, past an unhandled offset %d; final commit = log end: %s.\n",
			r.Samples, r.SampleErrors, len(o.Backwards), len(o.PastEnd), len(o.PastUnacked), yesNo(o.FinalOK))
	}
	drain := secs(r.Drain)
	if r.DrainErr != "" {
		drain = "did not drain: " + r.DrainErr
	}
	fmt.Fprintf(&b, "- Drain after the last fault: %s. SIGTERM at the end: %s.\n", drain, shutdownSummary(r.Shutdowns))
	var findings []string
	findings = append(findings, r.Unexpected...)
	if o != nil {
		findings = append(findings, o.LostSamples...)
		findings = append(findings, o.Backwards...)
		findings = append(findings, o.PastEnd...)
		findings = append(findings, first(o.PastUnacked, 10)...)
		if o.FinalNote != "" {
			findings = append(findings, o.FinalNote)
		}
		for _, u := range o.Unexplained {
			findings = append(findings, "unexplained duplicate: "+u)
		}
	}
	for _, res := range r.Results {
		if res.Err != "" {
			findings = append(findings, fmt.Sprintf("fault %s on %s failed: %s", res.Kind, res.Target, firstLine(res.Err)))
		}
	}
	for _, sd := range r.Shutdowns {
		if sd.Err != "" || sd.Code != 0 {
			findings = append(findings, fmt.Sprintf("%s: exit %d after SIGTERM in %s %s", sd.Proc, sd.Code, secs(sd.Took), sd.Err))
		}
	}
	if len(r.BadRequests) > 0 {
		findings = append(findings, fmt.Sprintf("%d deliveries the handler could not read, e.g. %s", len(r.BadRequests), r.BadRequests[0]))
	}
	if len(findings) > 0 {
		b.WriteString("- Findings:\n")
		for _, f := range findings {
			fmt.Fprintf(&b, "  - %s\n", f)
		}
	}
	b.WriteString("\n")
	return b.String()
}

// ScheduleText lists the schedule and what became of each fault.
func (r *Report) ScheduleText() string {
	var b strings.Builder
	for _, res := range r.Results {
		fmt.Fprintf(&b, "%s", res.Fault.String())
		switch {
		case res.Skipped != "":
			fmt.Fprintf(&b, "  skipped: %s", res.Skipped)
		case res.Err != "":
			fmt.Fprintf(&b, "  FAILED: %s", firstLine(res.Err))
		default:
			fmt.Fprintf(&b, "  at %s, over after %s", rel(r.Began, res.Start), secs(res.End.Sub(res.Start)))
			if res.Recovered.IsZero() {
				b.WriteString(", never recovered")
			} else {
				fmt.Fprintf(&b, ", recovered %s after its end", secs(max(res.Recovered.Sub(res.End), 0)))
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}

func causes(m map[string]int) string {
	if len(m) == 0 {
		return ""
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return m[keys[i]] > m[keys[j]] || m[keys[i]] == m[keys[j]] && keys[i] < keys[j] })
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return " (by cause: " + strings.Join(parts, ", ") + ")"
}

func badShutdowns(sds []Shutdown) int {
	n := 0
	for _, sd := range sds {
		if sd.Err != "" || sd.Code != 0 {
			n++
		}
	}
	return n
}

func shutdownSummary(sds []Shutdown) string {
	if len(sds) == 0 {
		return "no process running"
	}
	var longest time.Duration
	for _, sd := range sds {
		longest = max(longest, sd.Took)
	}
	if n := badShutdowns(sds); n > 0 {
		return fmt.Sprintf("%d of %d processes did not exit 0 in time", n, len(sds))
	}
	return fmt.Sprintf("all %d processes exited 0, the slowest in %s", len(sds), secs(longest))
}

func argsOrDefault(a []string) string {
	if len(a) == 0 {
		return "(defaults)"
	}
	return strings.Join(a, " ")
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "**no**"
}

func first(s []string, n int) []string {
	if len(s) > n {
		return append(s[:n:n], fmt.Sprintf("… and %d more", len(s)-n))
	}
	return s
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

func machine() string {
	model := ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	return fmt.Sprintf("%d CPUs %s", runtime.NumCPU(), model)
}

// Doc markers: the run sections live between them, one per title.
const (
	docBegin = "<!-- chaos:runs:begin -->"
	docEnd   = "<!-- chaos:runs:end -->"
)

// UpdateDoc replaces the section of r's title in the document at path (or
// adds it), between the run markers. The rest of the document is kept.
func UpdateDoc(path string, r *Report) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	doc := string(b)
	i, j := strings.Index(doc, docBegin), strings.Index(doc, docEnd)
	if i < 0 || j < i {
		return fmt.Errorf("%s: no %s … %s markers", path, docBegin, docEnd)
	}
	runs := doc[i+len(docBegin) : j]
	sections := splitSections(runs)
	title := "### " + r.Title() + "\n"
	md := r.Markdown()
	replaced := false
	for k, s := range sections {
		if strings.HasPrefix(s, title) {
			sections[k], replaced = md, true
		}
	}
	if !replaced {
		sections = append(sections, md)
	}
	out := doc[:i+len(docBegin)] + "\n\n" + strings.Join(sections, "") + doc[j:]
	return os.WriteFile(path, []byte(out), 0o644)
}

// splitSections splits text into "### " sections (text before the first one
// is dropped: the markers hold only sections).
func splitSections(text string) []string {
	var out []string
	for {
		i := strings.Index(text, "### ")
		if i < 0 {
			return out
		}
		text = text[i:]
		j := strings.Index(text[4:], "\n### ")
		if j < 0 {
			out = append(out, strings.TrimRight(text, "\n")+"\n\n")
			return out
		}
		out = append(out, strings.TrimRight(text[:4+j+1], "\n")+"\n\n")
		text = text[4+j+1:]
	}
}

// Passed reports whether the run kept every promise (see Outcome.Ok), drained,
// and every process exited as asked.
func (r *Report) Passed() bool { return r.Safe() && r.Outcome.Ok() }

// Safe is Passed but for unexplained duplicates (see Outcome.Safe).
func (r *Report) Safe() bool {
	return r.Outcome != nil && r.Outcome.Safe() && r.DrainErr == "" && len(r.Unexpected) == 0 && badShutdowns(r.Shutdowns) == 0
}
