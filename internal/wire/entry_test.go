package wire

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// toValues turns AppendFields output (field, value, field, value, ...) into
// the map go-redis hands a worker in XMessage.Values. Every value must be a
// string: that is all a stream entry can hold and all go-redis returns.
func toValues(t testing.TB, fields []any) map[string]any {
	t.Helper()
	if len(fields)%2 != 0 {
		t.Fatalf("AppendFields: want field/value pairs, got %d items", len(fields))
	}
	m := make(map[string]any, len(fields)/2)
	for i := 0; i < len(fields); i += 2 {
		name, ok := fields[i].(string)
		if !ok {
			t.Fatalf("AppendFields item %d: want a string field name, got %T", i, fields[i])
		}
		v, ok := fields[i+1].(string)
		if !ok {
			t.Fatalf("AppendFields field %q: want a string value, got %T", name, fields[i+1])
		}
		if _, dup := m[name]; dup {
			t.Fatalf("AppendFields: field %q appears twice", name)
		}
		m[name] = v
	}
	return m
}

// diffRecords describes how got differs from want, or returns "" when they
// are the same record: a nil Key or Value is not the same as an empty one, a
// nil header value not the same as an empty one; times compare at millisecond
// precision (the wire carries Unix milliseconds); no headers and an empty
// header list are the same.
func diffRecords(want, got Record) string {
	var d []string
	if want.Topic != got.Topic {
		d = append(d, fmt.Sprintf("Topic: want %q, got %q", want.Topic, got.Topic))
	}
	if want.Partition != got.Partition {
		d = append(d, fmt.Sprintf("Partition: want %d, got %d", want.Partition, got.Partition))
	}
	if want.Offset != got.Offset {
		d = append(d, fmt.Sprintf("Offset: want %d, got %d", want.Offset, got.Offset))
	}
	if w, g := want.Time.UnixMilli(), got.Time.UnixMilli(); w != g {
		d = append(d, fmt.Sprintf("Time: want %d ms, got %d ms", w, g))
	}
	if s := diffBytes(want.Key, got.Key); s != "" {
		d = append(d, "Key: "+s)
	}
	if s := diffBytes(want.Value, got.Value); s != "" {
		d = append(d, "Value: "+s)
	}
	if len(want.Headers) != len(got.Headers) {
		d = append(d, fmt.Sprintf("Headers: want %d, got %d (%v)", len(want.Headers), len(got.Headers), got.Headers))
	} else {
		for i := range want.Headers {
			w, g := want.Headers[i], got.Headers[i]
			if w.Key != g.Key {
				d = append(d, fmt.Sprintf("Headers[%d].Key: want %q, got %q", i, w.Key, g.Key))
			}
			if s := diffBytes(w.Value, g.Value); s != "" {
				d = append(d, fmt.Sprintf("Headers[%d].Value: %s", i, s))
			}
		}
	}
	return strings.Join(d, "; ")
}

func diffBytes(want, got []byte) string {
	show := func(b []byte) string {
		if b == nil {
			return "null"
		}
		return fmt.Sprintf("%q", b)
	}
	if (want == nil) != (got == nil) || !bytes.Equal(want, got) {
		return fmt.Sprintf("want %s, got %s", show(want), show(got))
	}
	return ""
}

func allBytes() []byte {
	b := make([]byte, 256)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

func TestRecordRoundTrip(t *testing.T) {
	ts := time.Date(2024, 5, 17, 12, 30, 45, 123_000_000, time.UTC)
	base := func(mod func(r *Record)) Record {
		r := Record{Topic: "orders", Partition: 3, Offset: 42, Time: ts, Key: []byte("k"), Value: []byte("v")}
		mod(&r)
		return r
	}
	tests := []struct {
		name string
		rec  Record
	}{
		{"plain", base(func(*Record) {})},
		{"null key", base(func(r *Record) { r.Key = nil })},
		{"empty key", base(func(r *Record) { r.Key = []byte{} })},
		{"null value (tombstone)", base(func(r *Record) { r.Value = nil })},
		{"empty value", base(func(r *Record) { r.Value = []byte{} })},
		{"null key and null value", base(func(r *Record) { r.Key, r.Value = nil, nil })},
		{"empty key and empty value", base(func(r *Record) { r.Key, r.Value = []byte{}, []byte{} })},
		{"every byte value in key and value", base(func(r *Record) { r.Key, r.Value = allBytes(), allBytes() })},
		{"invalid UTF-8 value", base(func(r *Record) { r.Value = []byte{0xff, 0xfe, 0x00, 0xc3} })},
		{"NUL bytes", base(func(r *Record) { r.Key, r.Value = []byte{0}, []byte{0, 0, 0} })},
		{"large value", base(func(r *Record) { r.Value = bytes.Repeat(allBytes(), 1024) })},
		{"one header", base(func(r *Record) { r.Headers = []Header{{Key: "trace", Value: []byte("abc")}} })},
		{"repeated header names keep their order", base(func(r *Record) {
			r.Headers = []Header{
				{Key: "a", Value: []byte("1")},
				{Key: "b", Value: []byte("2")},
				{Key: "a", Value: []byte("3")},
				{Key: "a", Value: []byte("4")},
			}
		})},
		{"null header value", base(func(r *Record) { r.Headers = []Header{{Key: "h", Value: nil}} })},
		{"empty header value", base(func(r *Record) { r.Headers = []Header{{Key: "h", Value: []byte{}}} })},
		{"null and empty header values side by side", base(func(r *Record) {
			r.Headers = []Header{{Key: "h", Value: nil}, {Key: "h", Value: []byte{}}, {Key: "h", Value: []byte("x")}}
		})},
		{"binary header value", base(func(r *Record) { r.Headers = []Header{{Key: "bin", Value: allBytes()}} })},
		{"empty header name", base(func(r *Record) { r.Headers = []Header{{Key: "", Value: []byte("v")}} })},
		{"header name with JSON metacharacters", base(func(r *Record) {
			r.Headers = []Header{{Key: `"],[\` + "\n\t<>&\u2028", Value: []byte("v")}}
		})},
		{"unicode header name", base(func(r *Record) { r.Headers = []Header{{Key: "größe-名前", Value: []byte("v")}} })},
		{"timestamp with milliseconds", base(func(r *Record) { r.Time = time.UnixMilli(1700000000123) })},
		{"timestamp before 1970", base(func(r *Record) { r.Time = time.UnixMilli(-1234) })},
		{"timestamp at the epoch", base(func(r *Record) { r.Time = time.UnixMilli(0) })},
		{"zero time", base(func(r *Record) { r.Time = time.Time{} })},
		{"offset 0 partition 0", base(func(r *Record) { r.Offset, r.Partition = 0, 0 })},
		{"largest offset", base(func(r *Record) { r.Offset = 1<<63 - 1 })},
		{"topic with punctuation", base(func(r *Record) { r.Topic = "shop.orders_v2-eu" })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			values := toValues(t, tt.rec.AppendFields(nil))
			got, err := Decode(values)
			if err != nil {
				t.Fatalf("Decode: want no error, got %v (values %q)", err, values)
			}
			if d := diffRecords(tt.rec, got); d != "" {
				t.Fatalf("round trip: %s", d)
			}
			if want, got := tt.rec.Time.IsZero(), got.Time.IsZero(); want != got {
				t.Fatalf("Time.IsZero: want %v, got %v", want, got)
			}
		})
	}
}

// TestRecordTimeTruncatedToMillis: the wire carries Unix milliseconds, so
// finer precision is dropped (truncated, not rounded).
func TestRecordTimeTruncatedToMillis(t *testing.T) {
	tests := []struct {
		name string
		in   time.Time
		want int64 // Unix ms
	}{
		{"sub-millisecond dropped", time.Unix(1700000000, 123_999_999), 1700000000123},
		{"exact millisecond", time.Unix(1700000000, 5_000_000), 1700000000005},
		{"time zone does not matter", time.Date(2024, 1, 2, 3, 4, 5, 6_000_000, time.FixedZone("X", 5*3600)), time.Date(2024, 1, 1, 22, 4, 5, 6_000_000, time.UTC).UnixMilli()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Record{Topic: "t", Time: tt.in}
			values := toValues(t, r.AppendFields(nil))
			if got, want := values[FieldTimestamp], fmt.Sprint(tt.want); got != want {
				t.Fatalf("field %q: want %q, got %q", FieldTimestamp, want, got)
			}
			got, err := Decode(values)
			if err != nil {
				t.Fatalf("Decode: want no error, got %v", err)
			}
			if !got.Time.Equal(time.UnixMilli(tt.want)) {
				t.Fatalf("Time: want %v, got %v", time.UnixMilli(tt.want), got.Time)
			}
		})
	}
}

// TestAppendFieldsLayout pins the entry layout of docs/wire.md, which a
// worker in another language decodes with nothing but a Redis client.
func TestAppendFieldsLayout(t *testing.T) {
	tests := []struct {
		name string
		rec  Record
		want map[string]any
	}{
		{
			name: "null key, null value, no headers: fields absent",
			rec:  Record{Topic: "orders", Partition: 3, Offset: 42, Time: time.UnixMilli(1700000000123)},
			want: map[string]any{"topic": "orders", "partition": "3", "offset": "42", "timestamp": "1700000000123"},
		},
		{
			name: "empty key and value: fields present and empty",
			rec:  Record{Topic: "orders", Partition: 0, Offset: 0, Time: time.UnixMilli(0), Key: []byte{}, Value: []byte{}},
			want: map[string]any{"topic": "orders", "partition": "0", "offset": "0", "timestamp": "0", "key": "", "value": ""},
		},
		{
			name: "raw bytes in key and value",
			rec:  Record{Topic: "t", Time: time.UnixMilli(1), Key: []byte{0, 0xff}, Value: []byte("é")},
			want: map[string]any{"topic": "t", "partition": "0", "offset": "0", "timestamp": "1", "key": "\x00\xff", "value": "é"},
		},
		{
			name: "headers: JSON list of [name, base64 or null], in order",
			rec: Record{Topic: "t", Time: time.UnixMilli(1), Headers: []Header{
				{Key: "a", Value: []byte("x")}, {Key: "a", Value: nil}, {Key: "b", Value: []byte{}}, {Key: "c", Value: []byte{0xff}},
			}},
			want: map[string]any{"topic": "t", "partition": "0", "offset": "0", "timestamp": "1",
				"headers": `[["a","eA=="],["a",null],["b",""],["c","/w=="]]`},
		},
		{
			name: "empty header list: field absent",
			rec:  Record{Topic: "t", Time: time.UnixMilli(1), Headers: []Header{}},
			want: map[string]any{"topic": "t", "partition": "0", "offset": "0", "timestamp": "1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := toValues(t, tt.rec.AppendFields(nil))
			if len(got) != len(tt.want) {
				t.Errorf("want %d fields %q, got %d fields %q", len(tt.want), tt.want, len(got), got)
			}
			for k, w := range tt.want {
				if g, ok := got[k]; !ok || g != w {
					t.Errorf("field %q: want %q, got %q (present %v)", k, w, g, ok)
				}
			}
		})
	}
}

func TestAppendFieldsAppends(t *testing.T) {
	r := Record{Topic: "t", Partition: 1, Offset: 2, Time: time.UnixMilli(3)}
	dst := []any{"MAXLEN", "~", "10"}
	got := r.AppendFields(dst)
	if len(got) < 3 || got[0] != "MAXLEN" || got[1] != "~" || got[2] != "10" {
		t.Fatalf("AppendFields: want the existing items kept at the front, got %q", got)
	}
	if want := 3 + 8; len(got) != want {
		t.Fatalf("AppendFields: want %d items, got %d: %q", want, len(got), got)
	}
}

func TestDecodeIgnoresUnknownFields(t *testing.T) {
	values := map[string]any{"topic": "t", "partition": "1", "offset": "2", "timestamp": "3", "x-future": "whatever", "trace": "abc"}
	got, err := Decode(values)
	if err != nil {
		t.Fatalf("Decode: want no error, got %v", err)
	}
	want := Record{Topic: "t", Partition: 1, Offset: 2, Time: time.UnixMilli(3)}
	if d := diffRecords(want, got); d != "" {
		t.Fatal(d)
	}
}

func TestDecodeOptionalFields(t *testing.T) {
	tests := []struct {
		name   string
		values map[string]any
		want   Record
	}{
		{
			name:   "no key, value or headers: nulls, no headers",
			values: map[string]any{"topic": "t", "partition": "0", "offset": "0", "timestamp": "0"},
			want:   Record{Topic: "t", Time: time.UnixMilli(0)},
		},
		{
			name:   "headers empty list: no headers",
			values: map[string]any{"topic": "t", "partition": "0", "offset": "0", "timestamp": "-1", "headers": " [ ] "},
			want:   Record{Topic: "t", Time: time.UnixMilli(-1)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode(tt.values)
			if err != nil {
				t.Fatalf("Decode: want no error, got %v", err)
			}
			if d := diffRecords(tt.want, got); d != "" {
				t.Fatal(d)
			}
			if got.Key != nil || got.Value != nil {
				t.Fatalf("Key, Value: want nil (Kafka null), got %q, %q", got.Key, got.Value)
			}
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	valid := func() map[string]any {
		return map[string]any{
			"topic": "orders", "partition": "3", "offset": "42", "timestamp": "1700000000123",
			"key": "k", "value": "v", "headers": `[["a","eA=="]]`,
		}
	}
	with := func(field string, v any) map[string]any {
		m := valid()
		m[field] = v
		return m
	}
	without := func(field string) map[string]any {
		m := valid()
		delete(m, field)
		return m
	}
	tests := []struct {
		name   string
		values map[string]any
		field  string // the error must name it
	}{
		{"nil map", nil, "topic"},
		{"empty map", map[string]any{}, "topic"},
		{"missing topic", without("topic"), "topic"},
		{"missing partition", without("partition"), "partition"},
		{"missing offset", without("offset"), "offset"},
		{"missing timestamp", without("timestamp"), "timestamp"},
		{"empty topic", with("topic", ""), "topic"},
		{"partition with a plus sign", with("partition", "+3"), "partition"},
		{"partition with a leading zero", with("partition", "03"), "partition"},
		{"partition above int32", with("partition", "2147483648"), "partition"},
		{"offset with a leading zero", with("offset", "042"), "offset"},
		{"offset with a space", with("offset", " 42"), "offset"},
		{"timestamp minus zero", with("timestamp", "-0"), "timestamp"},
		{"timestamp with a plus sign", with("timestamp", "+1"), "timestamp"},
		{"timestamp in exponent form", with("timestamp", "1e3"), "timestamp"},
		{"headers JSON null", with("headers", "null"), "headers"},
		{"headers not UTF-8", with("headers", "[[\"\xff\",null]]"), "headers"},
		{"header value base64 with a line break", with("headers", `[["a","eA==\n"]]`), `"a"`},
		{"header value base64 without padding", with("headers", `[["a","eA"]]`), `"a"`},
		{"header value base64 with non-zero padding bits", with("headers", `[["a","eB=="]]`), `"a"`},
		{"non-numeric partition", with("partition", "three"), "partition"},
		{"negative partition", with("partition", "-1"), "partition"},
		{"empty partition", with("partition", ""), "partition"},
		{"fractional partition", with("partition", "1.5"), "partition"},
		{"non-numeric offset", with("offset", "forty-two"), "offset"},
		{"negative offset", with("offset", "-1"), "offset"},
		{"empty offset", with("offset", ""), "offset"},
		{"offset overflow", with("offset", "9223372036854775808"), "offset"},
		{"offset written as stream ID", with("offset", "42-1"), "offset"},
		{"non-numeric timestamp", with("timestamp", "yesterday"), "timestamp"},
		{"empty timestamp", with("timestamp", ""), "timestamp"},
		{"RFC 3339 timestamp", with("timestamp", "2024-01-01T00:00:00Z"), "timestamp"},
		{"headers not JSON", with("headers", "a=b"), "headers"},
		{"headers truncated JSON", with("headers", `[["a","eA=="]`), "headers"},
		{"headers an object", with("headers", `{"a":"eA=="}`), "headers"},
		{"headers a list of strings", with("headers", `["a","b"]`), "headers"},
		{"header with one element", with("headers", `[["a"]]`), "header 0"},
		{"header with three elements", with("headers", `[["a","eA==","x"]]`), "header 0"},
		{"header with null name", with("headers", `[[null,"eA=="]]`), "header 0"},
		{"second header bad", with("headers", `[["a","eA=="],[]]`), "header 1"},
		{"header name a number", with("headers", `[[1,"eA=="]]`), "headers"},
		{"header value a number", with("headers", `[["a",1]]`), "headers"},
		{"header value not base64", with("headers", `[["a","not base64!"]]`), `"a"`},
		{"header value bad base64 padding", with("headers", `[["a","eA="]]`), `"a"`},
		{"header value URL-safe base64", with("headers", `[["a","_w=="]]`), `"a"`},
		{"topic not a string", with("topic", 7), "topic"},
		{"partition an int", with("partition", 3), "partition"},
		{"offset an int64", with("offset", int64(42)), "offset"},
		{"timestamp an int64", with("timestamp", int64(1)), "timestamp"},
		{"key as []byte", with("key", []byte("k")), "key"},
		{"value nil interface", with("value", nil), "value"},
		{"headers a slice", with("headers", []any{"a"}), "headers"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode(tt.values)
			if err == nil {
				t.Fatalf("Decode(%v): want an error wrapping ErrMalformed, got nil and %+v", tt.values, got)
			}
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Decode(%v): want an error wrapping ErrMalformed, got %v", tt.values, err)
			}
			if !strings.Contains(err.Error(), tt.field) {
				t.Errorf("Decode(%v): want the error to name %s, got %q", tt.values, tt.field, err)
			}
		})
	}
}
