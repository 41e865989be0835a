package wire

import (
	"context"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/segmentio/kafka-go"
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
			exportedAt := time.Now()
			m := EncodeDLQMessage("orders", 3, "1800-0", values, exportedAt)
			if !m.Time.Equal(exportedAt) {
				t.Errorf("message time %v, want the export time %v (the dead-letter time %v travels in %s)", m.Time, exportedAt, info.Time, HeaderDLQTime)
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

// TestDLQMessageTimeIsExportTime: the Kafka timestamp of a dead letter is
// the export time whatever the worker wrote in dlq_time (2 hours ahead, 8
// days behind, in microseconds): Kafka refuses a timestamp more than
// message.timestamp.after.max.ms (1 hour) ahead, and retention deletes one
// older than retention.ms right away. dlq_time travels as a header.
func TestDLQMessageTimeIsExportTime(t *testing.T) {
	now := time.Now()
	for name, dlqTime := range map[string]string{
		"ahead":        strconv.FormatInt(now.Add(2*time.Hour).UnixMilli(), 10),
		"behind":       strconv.FormatInt(now.Add(-8*24*time.Hour).UnixMilli(), 10),
		"microseconds": strconv.FormatInt(now.UnixMicro(), 10),
		"junk":         "yesterday",
	} {
		t.Run(name, func(t *testing.T) {
			rec := Record{Topic: "orders", Partition: 1, Offset: 7, Time: now, Value: []byte("v")}
			values := map[string]any{}
			f := rec.AppendFields(nil)
			for i := 0; i < len(f); i += 2 {
				values[f[i].(string)] = f[i+1]
			}
			values[FieldDLQReason] = ReasonRejected
			values[FieldDLQTime] = dlqTime
			m := EncodeDLQMessage("orders", 1, "9-0", values, now)
			if !m.Time.Equal(now) {
				t.Errorf("timestamp %v, want the export time %v", m.Time, now)
			}
			d, err := DecodeDLQMessage(m)
			if err != nil || d.DLQFields[FieldDLQTime] != dlqTime {
				t.Errorf("dlq_time header %q (%v), want %q", d.DLQFields[FieldDLQTime], err, dlqTime)
			}
		})
	}
}

// TestDLQStubMessage: a dead letter too large to export becomes a stub:
// no key, value, record headers or extra fields; its coordinates and
// dead-letter fields kept (long ones cut); the reason saying where the
// record is; it fits in the limit, even a small one with long names.
func TestDLQStubMessage(t *testing.T) {
	long := strings.Repeat("t", 249)
	for _, tt := range []struct {
		name, topic string
		maxBytes    int
		malformed   bool
	}{
		{"record", "orders", 4096, false},
		{"record, 1024 bytes, longest topic name", long, 1024, false},
		{"malformed", "orders", 4096, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			values := map[string]any{}
			if !tt.malformed {
				rec := Record{Topic: tt.topic, Partition: 3, Offset: 1234567, Time: time.UnixMilli(1700000000000),
					Key: []byte("k"), Value: []byte(strings.Repeat("v", 1<<20)), Headers: []Header{{Key: "h", Value: []byte("x")}}}
				f := rec.AppendFields(nil)
				for i := 0; i < len(f); i += 2 {
					values[f[i].(string)] = f[i+1]
				}
			} else {
				values["junk"] = strings.Repeat("j", 1<<20)
			}
			values["extra"] = "e"
			values[FieldDLQReason] = ReasonMaxDeliveries
			values[FieldDLQError] = strings.Repeat("é", 5000)
			values[FieldDLQGroup] = "workers"
			values[FieldDLQStream] = "kbridge:{" + tt.topic + ":3}"
			values[FieldDLQTime] = "1700000000999"
			m := EncodeDLQMessage(tt.topic, 3, "1700000000999-0", values, time.Now())
			size := DLQMessageSize(m)
			stub := StubDLQMessage(m, size, tt.maxBytes)
			if got := DLQMessageSize(stub); got > tt.maxBytes {
				t.Errorf("stub of %d bytes, over %d", got, tt.maxBytes)
			}
			d, err := DecodeDLQMessage(stub)
			if err != nil {
				t.Fatal(err)
			}
			if d.Stub == "" || d.Key != nil || d.Value != nil || d.Headers != nil || len(d.Fields) != 0 {
				t.Errorf("stub decoded as %+v", d)
			}
			if d.Ref != DeadLetterRef(tt.topic, 3, "1700000000999-0") || d.Topic != tt.topic || d.Partition != 3 || d.Info.Reason != ReasonMaxDeliveries {
				t.Errorf("stub coordinates: ref %q topic %q partition %d reason %q", d.Ref, d.Topic, d.Partition, d.Info.Reason)
			}
			if !tt.malformed && (d.Offset != 1234567 || !strings.Contains(d.Stub, "offset 1234567")) {
				t.Errorf("stub offset %d, reason %q", d.Offset, d.Stub)
			}
			if tt.malformed && (d.Malformed == "" || !strings.Contains(d.Stub, "malformed")) {
				t.Errorf("malformed stub: %q, reason %q", d.Malformed, d.Stub)
			}
			if e := d.DLQFields[FieldDLQError]; e != "" && (!utf8.ValidString(e) || len(e) > stubValueMax+len("…")) {
				t.Errorf("dlq_error in the stub: %d bytes, valid UTF-8 %v", len(e), utf8.ValidString(e))
			}
			t.Logf("%d-byte dead letter -> %d-byte stub (limit %d): %s", size, DLQMessageSize(stub), tt.maxBytes, d.Stub)
		})
	}
}

// TestDLQMessageSizeIsKafkaGos: DLQMessageSize is the size kafka-go's
// Writer compares with BatchBytes: a message of exactly BatchBytes passes
// its check, one byte more is refused (MessageTooLargeError) before
// anything is sent.
func TestDLQMessageSizeIsKafkaGos(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // past the size check, the Writer stops at once
	for _, m := range []DLQMessage{
		{},
		{Key: []byte("k"), Value: []byte(strings.Repeat("v", 300))},
		{Value: []byte("v"), Headers: []Header{{Key: "a", Value: nil}, {Key: strings.Repeat("h", 200), Value: []byte(strings.Repeat("x", 70000))}}},
	} {
		size := DLQMessageSize(m)
		km := kafka.Message{Topic: "t", Key: m.Key, Value: m.Value}
		for _, h := range m.Headers {
			km.Headers = append(km.Headers, kafka.Header{Key: h.Key, Value: h.Value})
		}
		for _, limit := range []int{size, size - 1} {
			w := &kafka.Writer{Addr: kafka.TCP("127.0.0.1:1"), BatchBytes: int64(limit)}
			err := w.WriteMessages(ctx, km)
			w.Close()
			var tooLarge kafka.MessageTooLargeError
			if got := errors.As(err, &tooLarge); got != (limit < size) {
				t.Errorf("size %d, BatchBytes %d: %v; want too large %v", size, limit, err, limit < size)
			}
		}
	}
}
