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
