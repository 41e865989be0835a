package conformance

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestAction(t *testing.T) {
	for _, tt := range []struct {
		value      string
		deliveries int64
		want       Step
	}{
		{"ok", 1, Step{}},
		{"fail", 3, Step{Fail: true}},
		{"sleep:250", 1, Step{Sleep: 250 * time.Millisecond}},
		{"sleepfail:10", 2, Step{Fail: true, Sleep: 10 * time.Millisecond}},
		{"fail|fail|ok", 1, Step{Fail: true}},
		{"fail|fail|ok", 3, Step{}},
		{"fail|fail|ok", 9, Step{}},
		{"sleep:60000|ok", 2, Step{}},
		{"fail|", 1, Step{}},             // not an action: succeeds
		{"FAIL", 1, Step{}},              // not an action
		{"\x00\xff", 1, Step{}},          // binary: succeeds
		{"sleep:-1", 1, Step{}},          // not an action
		{"fail|ok", 0, Step{Fail: true}}, // a count below 1 is the first delivery
		{"wait:own", 3, Step{Wait: "own"}},
		{"waitfail:r", 2, Step{Fail: true, Wait: "r"}},
		{"waitfail:s|ok", 2, Step{}},
		{"wait:", 1, Step{}},       // not an action: no name
		{"wait:A_b", 1, Step{}},    // not an action: a name is [a-z0-9-]
		{"wait:../x", 1, Step{}},   // not an action: no path
		{"sleepwait:1", 1, Step{}}, // not an action
	} {
		if got := Action([]byte(tt.value), tt.deliveries); got != tt.want {
			t.Errorf("Action(%q, %d) = %+v, want %+v", tt.value, tt.deliveries, got, tt.want)
		}
	}
}

// TestExecHandler: the exec handler reads the record as kbridge worker
// --exec passes it, writes a start and an end event, and exits as the value
// says.
func TestExecHandler(t *testing.T) {
	log := filepath.Join(t.TempDir(), "events")
	env := []string{"CONFORMANCE_LOG=" + log, "CONFORMANCE_WORKER=w1", "KBRIDGE_STREAM=p:{t:3}", "KBRIDGE_ID=7-1",
		"KBRIDGE_TOPIC=t", "KBRIDGE_PARTITION=3", "KBRIDGE_OFFSET=7", "KBRIDGE_TIMESTAMP=-1", "KBRIDGE_DELIVERIES=2",
		"KBRIDGE_KEY_B64=", "KBRIDGE_VALUE_NULL=1", `KBRIDGE_HEADERS=[["a",null],["a","YQ=="]]`}
	code, err := ExecHandler(env, nil)
	if err != nil || code != 0 {
		t.Fatalf("ExecHandler: %d, %v", code, err)
	}
	code, err = ExecHandler(append(env[:len(env)-2:len(env)-2], "KBRIDGE_KEY_NULL=1"), []byte("ok|fail"))
	if err != nil || code != 1 {
		t.Fatalf("ExecHandler of \"ok|fail\" on delivery 2: %d, %v; want 1", code, err)
	}
	evs, bad := readEvents(log)
	if len(bad) > 0 || len(evs) != 4 {
		t.Fatalf("events %+v, bad %v: want 4", evs, bad)
	}
	e := evs[0]
	if e.Event != "start" || e.Worker != "w1" || e.Stream != "p:{t:3}" || e.ID != "7-1" || e.Topic != "t" || e.Partition != 3 ||
		e.Offset != 7 || e.Timestamp != -1 || e.Deliveries != 2 || e.Key == nil || *e.Key != "" || e.Value != nil ||
		len(e.Headers) != 2 || e.Headers[0][1] != nil || *e.Headers[1][1] != "YQ==" {
		t.Errorf("start event %+v", e)
	}
	if evs[1].Event != "end" || evs[1].Result != "ok" || evs[3].Result != "fail" || evs[2].Key != nil || evs[2].Value == nil || *evs[2].Value != "b2t8ZmFpbA==" {
		t.Errorf("events %+v", evs)
	}
	if _, err := ExecHandler(env[1:], nil); err == nil || !strings.Contains(err.Error(), "CONFORMANCE_LOG") {
		t.Errorf("without CONFORMANCE_LOG: %v", err)
	}
	// A line being written (no newline yet) is not read.
	f, _ := os.OpenFile(log, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"event":"start"`)
	f.Close()
	if evs, bad := readEvents(log); len(evs) != 4 || len(bad) != 0 {
		t.Errorf("with a partial last line: %d events, bad %v", len(evs), bad)
	}
}

// TestEventNumbers: the numbers of an event may be JSON numbers or decimal
// strings (a JavaScript handler must write offsets above 2^53 as strings).
func TestEventNumbers(t *testing.T) {
	log := filepath.Join(t.TempDir(), "events")
	lines := `{"event":"start","deliveries":"2","partition":3,"offset":"9223372036854775807","timestamp":"-9223372036854775808"}
{"event":"end","deliveries":2,"partition":"3","offset":9223372036854775807,"timestamp":-1,"result":"ok"}
{"event":"start","offset":9223372036854776000}
{"event":"start","offset":"12x"}
{"event":"start","offset":1.5}
`
	if err := os.WriteFile(log, []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	evs, bad := readEvents(log)
	if len(evs) != 2 || len(bad) != 3 {
		t.Fatalf("got %d events and %d bad lines (%v), want 2 and 3 (a rounded number, a bad string, a fraction)", len(evs), len(bad), bad)
	}
	if e := evs[0]; e.Deliveries != 2 || e.Partition != 3 || e.Offset != 9223372036854775807 || e.Timestamp != -9223372036854775808 {
		t.Errorf("strings: %+v", e)
	}
	if e := evs[1]; e.Deliveries != 2 || e.Partition != 3 || e.Offset != 9223372036854775807 || e.Timestamp != -1 {
		t.Errorf("numbers: %+v", e)
	}
}

// TestStepWaits: a wait step returns once the kit's file exists, and a
// handler without it would wait (here: it is there from the start).
func TestStepWaits(t *testing.T) {
	log := filepath.Join(t.TempDir(), "events")
	st := Action([]byte("waitfail:own"), 3)
	done := make(chan struct{})
	go func() { st.Do(log, 3); close(done) }()
	select {
	case <-done:
		t.Fatal("the step returned before the file existed")
	case <-time.After(100 * time.Millisecond):
	}
	if err := os.WriteFile(WaitFile(log, "own", 3), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the step did not return within 5s of the file")
	}
	if got := WaitFile(log, "own", 3); got != log+".own.3" {
		t.Errorf("WaitFile = %q", got)
	}
}
