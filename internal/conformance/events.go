package conformance

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Event is one line a handler appends to CONFORMANCE_LOG.
type Event struct {
	// Event is "start" (before acting) or "end" (after, with Result).
	Event  string `json:"event"`
	Worker string `json:"worker"` // CONFORMANCE_WORKER
	// Stream and ID say where the entry was read; Deliveries is its delivery
	// count (1 on the first delivery).
	Stream     string `json:"stream"`
	ID         string `json:"id"`
	Deliveries Int    `json:"deliveries"`
	// The decoded record: Key and Value base64 (standard, padded) or null
	// for a Kafka null; Headers as on the wire, [name, base64 or null]
	// pairs (null or [] when there are none); Replayed for an entry of a
	// replay stream.
	Topic     string       `json:"topic"`
	Partition Int          `json:"partition"`
	Offset    Int          `json:"offset"`
	Timestamp Int          `json:"timestamp"`
	Key       *string      `json:"key"`
	Value     *string      `json:"value"`
	Headers   [][2]*string `json:"headers"`
	Replayed  bool         `json:"replayed"`
	// Result is "ok" or "fail" in an end event.
	Result string `json:"result,omitempty"`
}

// Int is an integer of an event: a JSON number, or a decimal string (which
// JavaScript's JSON.stringify needs for offsets and timestamps above 2^53:
// it would round the number). It is written as a number.
type Int int64

// UnmarshalJSON reads a JSON number or a string holding a decimal integer.
func (n *Int) UnmarshalJSON(b []byte) error {
	s := string(b)
	if len(b) > 1 && b[0] == '"' {
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return fmt.Errorf("conformance: %s is not an integer (a JSON number or a decimal string)", b)
	}
	*n = Int(v)
	return nil
}

// Step is what a handler does on one delivery.
type Step struct {
	Fail  bool          // fail (after Sleep and Wait), else succeed
	Sleep time.Duration // sleep first
	// Wait names a file the handler waits for before it goes on (at most
	// WaitLimit): WaitFile(log, Wait, deliveries). The kit creates it when it
	// has done what it does while the handler runs.
	Wait string
}

// WaitLimit is how long a handler waits for the kit's file at most.
const WaitLimit = 60 * time.Second

// WaitFile returns the file a handler of a "wait:<name>" step waits for, on
// the delivery given: "<CONFORMANCE_LOG>.<name>.<deliveries>".
func WaitFile(log, name string, deliveries int64) string {
	return log + "." + name + "." + strconv.FormatInt(deliveries, 10)
}

const actionStep = `(ok|fail|(sleep|sleepfail):[0-9]{1,9}|(wait|waitfail):[a-z0-9-]{1,32})`

var actionRE = regexp.MustCompile(`^` + actionStep + `(\|` + actionStep + `)*$`)

// Action returns what the handler does on the given delivery (1, 2, ...) of
// a record with this value. A value that is not an action succeeds at once.
func Action(value []byte, deliveries int64) Step {
	if !actionRE.Match(value) {
		return Step{}
	}
	steps := strings.Split(string(value), "|")
	i := int(min(max(deliveries, 1), int64(len(steps)))) - 1
	verb, arg, _ := strings.Cut(steps[i], ":")
	ms, _ := strconv.Atoi(arg)
	switch verb {
	case "fail":
		return Step{Fail: true}
	case "sleep":
		return Step{Sleep: time.Duration(ms) * time.Millisecond}
	case "sleepfail":
		return Step{Fail: true, Sleep: time.Duration(ms) * time.Millisecond}
	case "wait":
		return Step{Wait: arg}
	case "waitfail":
		return Step{Fail: true, Wait: arg}
	}
	return Step{}
}

// Do does the step's sleep and wait (for a handler that logs to log, on the
// given delivery).
func (st Step) Do(log string, deliveries int64) {
	time.Sleep(st.Sleep)
	if st.Wait == "" {
		return
	}
	f := WaitFile(log, st.Wait, deliveries)
	for deadline := time.Now().Add(WaitLimit); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(f); err == nil {
			return
		}
	}
}

// AppendEvent appends e as one JSON line to the file at path, in a single
// write (O_APPEND), so that lines of concurrent handlers do not interleave.
func AppendEvent(path string, e Event) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// readEvents reads every complete line of the events file. Lines that do
// not parse are returned as errors (a handler that writes garbage fails the
// kit's checks, not the kit).
func readEvents(path string) ([]Event, []string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil
	}
	// Only whole lines: a handler may be writing the last one right now.
	b = b[:bytes.LastIndexByte(b, '\n')+1]
	var evs []Event
	var bad []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var e Event
		if err := json.Unmarshal(line, &e); err != nil || (e.Event != "start" && e.Event != "end") {
			bad = append(bad, fmt.Sprintf("%.200q", line))
			continue
		}
		evs = append(evs, e)
	}
	return evs, bad
}

// ExecHandler is the handler of "kbridge conformance-handler": it reads the
// record from the environment (env, "KEY=value" as os.Environ returns them)
// and value from stdin the way "kbridge worker --exec" passes them, appends
// the events to CONFORMANCE_LOG and acts; it returns the exit status (0 done,
// 1 failed).
func ExecHandler(env []string, value []byte) (int, error) {
	get := map[string]string{}
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			get[k] = v
		}
	}
	path := get["CONFORMANCE_LOG"]
	if path == "" {
		return 2, fmt.Errorf("CONFORMANCE_LOG is not set: this command is a handler for the conformance kit")
	}
	e := Event{
		Event: "start", Worker: get["CONFORMANCE_WORKER"],
		Stream: get["KBRIDGE_STREAM"], ID: get["KBRIDGE_ID"], Topic: get["KBRIDGE_TOPIC"],
		Replayed: get["KBRIDGE_REPLAYED"] == "1",
	}
	var err error
	num := func(name string) int64 {
		n, perr := strconv.ParseInt(get[name], 10, 64)
		if perr != nil && err == nil {
			err = fmt.Errorf("%s=%q: %v", name, get[name], perr)
		}
		return n
	}
	e.Partition = Int(num("KBRIDGE_PARTITION"))
	e.Offset = Int(num("KBRIDGE_OFFSET"))
	e.Timestamp = Int(num("KBRIDGE_TIMESTAMP"))
	e.Deliveries = Int(num("KBRIDGE_DELIVERIES"))
	if err != nil {
		return 2, err
	}
	if get["KBRIDGE_KEY_NULL"] != "1" {
		k := get["KBRIDGE_KEY_B64"]
		e.Key = &k
	}
	if get["KBRIDGE_VALUE_NULL"] != "1" {
		v := base64.StdEncoding.EncodeToString(value)
		e.Value = &v
	}
	if h := get["KBRIDGE_HEADERS"]; h != "" {
		if err := json.Unmarshal([]byte(h), &e.Headers); err != nil {
			return 2, fmt.Errorf("KBRIDGE_HEADERS: %v", err)
		}
	}
	if err := AppendEvent(path, e); err != nil {
		return 2, err
	}
	step := Action(value, int64(e.Deliveries))
	step.Do(path, int64(e.Deliveries))
	e.Event, e.Result = "end", "ok"
	if step.Fail {
		e.Result = "fail"
	}
	if err := AppendEvent(path, e); err != nil {
		return 2, err
	}
	if step.Fail {
		return 1, nil
	}
	return 0, nil
}
