package wire

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestDLQMessageRoundTrip: a dead letter turned into a Kafka message and read
// back gives the record (null and empty keys and values kept apart, headers
// in order with repeats and nulls, even headers named like kbridge's), its
// dead-letter fields and its extra fields; EntryFields gives back the fields
// it had in Redis.
func TestDLQMessageRoundTrip(t *testing.T) {
	now := time.UnixMilli(1700000000123)
	info := DLQInfo{Reason: ReasonMaxDeliveries, Error: "boom\nline 2", Group: "billing", Consumer: "w-1",
		Deliveries: 5, Stream: "kb:{orders:3}:replay", ID: "1700-0", Time: time.UnixMilli(1700000009999)}
	tests := []struct {
		name string
		rec  Record
	}{
		{"null key and value", Record{Topic: "orders", Partition: 3, Offset: 17, Time: now}},
		{"empty key and value", Record{Topic: "orders", Partition: 3, Offset: 0, Time: now, Key: []byte{}, Value: []byte{}}},
		{"binary, headers", Record{Topic: "orders", Partition: 3, Offset: 9, Time: now, Key: []byte{0, 255}, Value: []byte("v\x00"),
			Headers: []Header{{Key: "a", Value: []byte("1")}, {Key: "a", Value: nil}, {Key: "b", Value: []byte{}},
				{Key: HeaderDLQRef, Value: []byte("a record's own header")}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			orig := map[string]any{}
			f := tt.rec.AppendFields(nil)
			for i := 0; i < len(f); i += 2 {
				orig[f[i].(string)] = f[i+1]
			}
			orig["extra"] = "kept"
			fields := DeadLetterFields(orig, info)
			values := map[string]any{}
			for i := 0; i < len(fields); i += 2 {
				values[fields[i].(string)] = fields[i+1]
			}
			m := EncodeDLQMessage("orders", 3, "1800-0", values, time.Now())
			if !m.Time.Equal(info.Time) {
				t.Errorf("message time %v, want the dead-letter time %v", m.Time, info.Time)
			}
			d, err := DecodeDLQMessage(m)
			if err != nil {
				t.Fatal(err)
			}
			if d.Ref != "orders:3/1800-0" || d.Topic != "orders" || d.Partition != 3 || d.Offset != tt.rec.Offset || d.Malformed != "" {
				t.Errorf("decoded %+v", d)
			}
			if (d.Key == nil) != (tt.rec.Key == nil) || string(d.Key) != string(tt.rec.Key) ||
				(d.Value == nil) != (tt.rec.Value == nil) || string(d.Value) != string(tt.rec.Value) {
				t.Errorf("key %q value %q, want %q %q", d.Key, d.Value, tt.rec.Key, tt.rec.Value)
			}
			if !reflect.DeepEqual(d.Headers, tt.rec.Headers) {
				t.Errorf("headers %q, want %q", d.Headers, tt.rec.Headers)
			}
			if !reflect.DeepEqual(d.Info, info) {
				t.Errorf("info %+v, want %+v", d.Info, info)
			}
			if !reflect.DeepEqual(d.Fields, map[string]string{"extra": "kept"}) {
				t.Errorf("fields %v", d.Fields)
			}
			back := d.EntryFields()
			for k, v := range values {
				if back[k] != v {
					t.Errorf("EntryFields()[%s] = %q, want %q", k, back[k], v)
				}
			}
			if len(back) != len(values) {
				t.Errorf("EntryFields() = %v, want %v", back, values)
			}
		})
	}
}

// TestDLQMessageMalformed: junk and records of another partition are
// exported as they are, each field a header, with the reason.
func TestDLQMessageMalformed(t *testing.T) {
	for _, tt := range []struct {
		name   string
		values map[string]any
		why    string
	}{
		{"junk", map[string]any{"foo": "bar", "offset": "x\x00"}, "missing"},
		{"another partition", map[string]any{"topic": "orders", "partition": "4", "offset": "1", "timestamp": "1"}, "belongs to orders/3"},
		{"a malformed entry dead-lettered", map[string]any{"value": "v", FieldDLQReason: ReasonMalformed, FieldDLQGroup: "workers"}, "missing"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			now := time.UnixMilli(1700000000000)
			m := EncodeDLQMessage("orders", 3, "5-0", tt.values, now)
			if m.Key != nil || m.Value != nil || !m.Time.Equal(now) {
				t.Errorf("message %+v", m)
			}
			d, err := DecodeDLQMessage(m)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(d.Malformed, tt.why) || d.Offset != -1 || d.Topic != "orders" || d.Partition != 3 {
				t.Errorf("decoded %+v, want malformed saying %q", d, tt.why)
			}
			for k, v := range tt.values {
				if IsDLQField(k) {
					continue
				}
				if d.Fields[k] != v {
					t.Errorf("field %s = %q, want %q", k, d.Fields[k], v)
				}
			}
			back := d.EntryFields()
			for k, v := range tt.values {
				if back[k] != v {
					t.Errorf("EntryFields()[%s] = %q, want %q", k, back[k], v)
				}
			}
		})
	}
	if _, err := DecodeDLQMessage(DLQMessage{Value: []byte("x")}); err != ErrNotDeadLetter {
		t.Errorf("a message without %s: %v, want ErrNotDeadLetter", HeaderDLQRef, err)
	}
}
