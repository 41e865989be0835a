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
	Deliveries int64  `json:"deliveries"`
	// The decoded record: Key and Value base64 (standard, padded) or null
	// for a Kafka null; Headers as on the wire, [name, base64 or null]
	// pairs (null or [] when there are none); Replayed for an entry of a
	// replay stream.
	Topic     string       `json:"topic"`
	Partition int          `json:"partition"`
	Offset    int64        `json:"offset"`
	Timestamp int64        `json:"timestamp"`
	Key       *string      `json:"key"`
	Value     *string      `json:"value"`
	Headers   [][2]*string `json:"headers"`
	Replayed  bool         `json:"replayed"`
	// Result is "ok" or "fail" in an end event.
	Result string `json:"result,omitempty"`
}

// Step is what a handler does on one delivery.
type Step struct {
	Fail  bool          // fail (after Sleep), else succeed
	Sleep time.Duration // sleep first
}

var actionRE = regexp.MustCompile(`^(ok|fail|sleep:[0-9]{1,9}|sleepfail:[0-9]{1,9})(\|(ok|fail|sleep:[0-9]{1,9}|sleepfail:[0-9]{1,9}))*$`)

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
	}
	return Step{}
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
	e.Partition = int(num("KBRIDGE_PARTITION"))
	e.Offset = num("KBRIDGE_OFFSET")
	e.Timestamp = num("KBRIDGE_TIMESTAMP")
	e.Deliveries = num("KBRIDGE_DELIVERIES")
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
	step := Action(value, e.Deliveries)
	time.Sleep(step.Sleep)
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
