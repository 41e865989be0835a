package wire

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzDecode feeds Decode arbitrary field values: it must never panic, every
// error must wrap ErrMalformed, and what it accepts must survive a round trip
// through AppendFields unchanged (Decode's output is a fixed point).
func FuzzDecode(f *testing.F) {
	// present is a bit mask: which of the seven fields the entry carries.
	f.Add(uint8(0x7f), "orders", "3", "42", "1700000000123", "k", "v", `[["a","eA=="],["a",null]]`)
	f.Add(uint8(0x07), "orders", "0", "0", "", "", "", "")
	f.Add(uint8(0x7f), "", "+3", "007", "-1", "\x00\xff", "", "null")
	f.Add(uint8(0x7f), "t", "1", "2", "3", "", "", `[["\ud800","YQ"]]`)
	f.Add(uint8(0x7f), "t", "1", "2", "3", "", "", `[["a","YQ==\n"]]`)
	f.Add(uint8(0x7f), "t", "x", "y", "z", "", "", `[[`)
	f.Add(uint8(0x40), "", "", "", "", "", "", `[]`)
	f.Fuzz(func(t *testing.T, present uint8, topic, partition, offset, ts, key, value, headers string) {
		topic, partition, offset, ts = short(topic), short(partition), short(offset), short(ts)
		key, value, headers = short(key), short(value), short(headers)
		values := map[string]any{}
		for i, kv := range []struct{ name, v string }{
			{FieldTopic, topic}, {FieldPartition, partition}, {FieldOffset, offset}, {FieldTimestamp, ts},
			{FieldKey, key}, {FieldValue, value}, {FieldHeaders, headers},
		} {
			if present&(1<<i) != 0 {
				values[kv.name] = kv.v
			}
		}
		rec, err := Decode(values)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Decode(%q): want an error wrapping ErrMalformed, got %v", values, err)
			}
			return
		}
		if rec.Partition < 0 || rec.Offset < 0 {
			t.Fatalf("Decode(%q): want partition and offset >= 0, got %d and %d", values, rec.Partition, rec.Offset)
		}
		again, err := Decode(toValues(t, rec.AppendFields(nil)))
		if err != nil {
			t.Fatalf("Decode(AppendFields(Decode(%q))): want no error, got %v", values, err)
		}
		if d := diffRecords(rec, again); d != "" {
			t.Fatalf("Decode(AppendFields(Decode(%q))): %s", values, d)
		}
	})
}

// FuzzRecordRoundTrip encodes arbitrary records and decodes them back.
//
// Header names are JSON strings on the wire, so a name that is not valid
// UTF-8 comes back with U+FFFD in place of the bad bytes; Kafka's protocol
// defines header keys as UTF-8 strings, and the fuzz only feeds valid ones.
// Keys, values and header values are raw bytes and must survive as they are.
func FuzzRecordRoundTrip(f *testing.F) {
	f.Add("orders", uint16(3), int64(42), int64(1700000000123), []byte("k"), false, []byte("v"), false, []byte("\x02\x01a\x00\x01x\x01a\x01\x00"))
	f.Add("", uint16(0), int64(0), int64(0), []byte{}, false, []byte{}, false, []byte{})
	f.Add("t", uint16(1), int64(1), int64(-1), []byte(nil), true, []byte(nil), true, []byte{0x05})
	f.Add("\xff", uint16(65535), int64(1<<62), int64(-62135596800000), allBytes(), false, allBytes(), false, []byte("\x01\x03\xe2\x82\xac\x00\x03\x00\xff\x01"))
	f.Fuzz(func(t *testing.T, topic string, partition uint16, offset, ms int64, key []byte, nullKey bool, value []byte, nullValue bool, hdr []byte) {
		topic, key, value, hdr = short(topic), short(key), short(value), short(hdr)
		if topic == "" {
			topic = "t" // Kafka topics are never empty; Decode refuses an empty one
		}
		if offset < 0 {
			offset = -(offset + 1)
		}
		if ms > 1<<53 || ms < -1<<53 {
			ms %= 1 << 53 // stay where time.UnixMilli is exact
		}
		rec := Record{Topic: topic, Partition: int(partition), Offset: offset, Time: time.UnixMilli(ms)}
		if !nullKey {
			rec.Key = append([]byte{}, key...)
		}
		if !nullValue {
			rec.Value = append([]byte{}, value...)
		}
		rec.Headers = headersFromBytes(hdr)
		got, err := Decode(toValues(t, rec.AppendFields(nil)))
		if err != nil {
			t.Fatalf("Decode(AppendFields(%+v)): want no error, got %v", rec, err)
		}
		if d := diffRecords(rec, got); d != "" {
			t.Fatalf("round trip of %+v: %s", rec, d)
		}
	})
}

// headersFromBytes reads a header list from fuzz bytes: a count, then per
// header a name length, the name, a null flag, a value length and the value.
// Names are made valid UTF-8.
func headersFromBytes(b []byte) []Header {
	next := func(n int) []byte {
		n = min(n, len(b))
		out := b[:n]
		b = b[n:]
		return out
	}
	byteOr0 := func() int {
		if x := next(1); len(x) == 1 {
			return int(x[0])
		}
		return 0
	}
	count := byteOr0() % 8
	var hs []Header
	for range count {
		name := string(next(byteOr0() % 16))
		if !utf8.ValidString(name) {
			name = strings.ToValidUTF8(name, "?")
		}
		h := Header{Key: name}
		if byteOr0()%2 == 0 {
			h.Value = append([]byte{}, next(byteOr0())...)
		}
		hs = append(hs, h)
	}
	return hs
}

// FuzzParseStreamKey: ParseStreamKey never panics, and what it accepts is
// rebuilt by StreamKey into a key that parses to the same prefix, topic and
// partition. (It accepts a few spellings StreamKey does not write, such as
// partition "03" or "+3"; workers only ever see keys the ingest wrote.)
func FuzzParseStreamKey(f *testing.F) {
	f.Add("kbridge:{orders:3}")
	f.Add("app:prod:{shop.orders_v2-eu:12}")
	f.Add("x:{y:{t:1}")
	f.Add(":{t:0}")
	f.Add("kbridge:{orders:3}:dlq")
	f.Add("kbridge:{:3}")
	f.Fuzz(func(t *testing.T, key string) {
		key = short(key)
		prefix, topic, partition, err := ParseStreamKey(key)
		if err != nil {
			return
		}
		if topic == "" || partition < 0 {
			t.Fatalf("ParseStreamKey(%q) = (%q, %q, %d): want a topic and a partition >= 0", key, prefix, topic, partition)
		}
		again := StreamKey(prefix, topic, partition)
		p2, t2, n2, err := ParseStreamKey(again)
		if err != nil || p2 != prefix || t2 != topic || n2 != partition {
			t.Fatalf("ParseStreamKey(StreamKey(ParseStreamKey(%q))) = (%q, %q, %d, %v): want (%q, %q, %d, nil)",
				key, p2, t2, n2, err, prefix, topic, partition)
		}
	})
}

// FuzzStreamKey: any prefix, any legal Kafka topic name ([a-zA-Z0-9._-]) and
// partition make a key that parses back to them.
func FuzzStreamKey(f *testing.F) {
	f.Add("kbridge", "orders", uint16(3))
	f.Add("a:{b}:c", "x.y_z-1", uint16(0))
	f.Add("", "t", uint16(65535))
	f.Fuzz(func(t *testing.T, prefix, topic string, partition uint16) {
		prefix, topic = short(prefix), short(topic)
		topic = strings.Map(func(r rune) rune {
			if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-' {
				return r
			}
			return -1
		}, topic)
		if topic == "" {
			topic = "t"
		}
		key := StreamKey(prefix, topic, int(partition))
		p, tp, n, err := ParseStreamKey(key)
		if err != nil || p != prefix || tp != topic || n != int(partition) {
			t.Fatalf("ParseStreamKey(%q) = (%q, %q, %d, %v): want (%q, %q, %d, nil)", key, p, tp, n, err, prefix, topic, partition)
		}
	})
}

// FuzzIDs: EntryID, ParseID and Through agree on every canonical stream ID,
// and never panic on anything else.
func FuzzIDs(f *testing.F) {
	f.Add(uint64(0), uint64(0), "0-0")
	f.Add(uint64(5), uint64(1), "5-1")
	f.Add(uint64(1<<63-1), uint64(1<<64-1), "x")
	f.Fuzz(func(t *testing.T, ms, seq uint64, junk string) {
		junk = short(junk)
		_, _ = ParseID(junk) // must not panic
		_, _ = Through(junk)
		ms &= 1<<63 - 1
		id := fmt.Sprintf("%d-%d", ms, seq)
		off, err := ParseID(id)
		if err != nil || off != int64(ms) {
			t.Fatalf("ParseID(%q): want (%d, nil), got (%d, %v)", id, ms, off, err)
		}
		want := int64(ms)
		if seq == 0 {
			want--
		}
		if th, err := Through(id); err != nil || th != want {
			t.Fatalf("Through(%q): want (%d, nil), got (%d, %v)", id, want, th, err)
		}
		if back, err := ParseID(EntryID(int64(ms))); err != nil || back != int64(ms) {
			t.Fatalf("ParseID(EntryID(%d)): want (%d, nil), got (%d, %v)", ms, ms, back, err)
		}
	})
}

// short cuts a fuzz input to 300 bytes: longer ones find nothing new, and
// the fuzzer's minimizer spends minutes on them.
func short[T string | []byte](s T) T {
	return s[:min(len(s), 300)]
}
