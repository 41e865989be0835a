package wire

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors.json from the definitions in vectors_test.go")

// vdef is a vector as written here: fields in Redis order (name, value,
// name, value, ...), and either the record they mean or why they are
// malformed.
type vdef struct {
	name, stream, id string
	fields           []string
	rec              *VectorRecord
	malformed        string
}

func s(v string) *string                        { return &v }
func b(v string) *string                        { return s(base64.StdEncoding.EncodeToString([]byte(v))) }
func hdr(name string, value *string) [2]*string { return [2]*string{s(name), value} }

func allBytesString() string {
	var buf bytes.Buffer
	for i := range 256 {
		buf.WriteByte(byte(i))
	}
	return buf.String()
}

// base returns the fields of a valid entry of partition stream {vectors:p}
// at offset o, with the given extra fields appended.
func base(p int, o string, extra ...string) []string {
	return append([]string{"topic", "vectors", "partition", strconv.Itoa(p), "offset", o, "timestamp", "1700000000000"}, extra...)
}

func rec(p int, o string, key, value *string, headers ...[2]*string) *VectorRecord {
	if headers == nil {
		headers = [][2]*string{}
	}
	return &VectorRecord{Topic: "vectors", Partition: p, Offset: o, Timestamp: "1700000000000", Key: key, Value: value, Headers: headers}
}

// stream returns the partition stream key of {vectors:p} under prefix kbridge.
func stream(p int) string { return StreamKey("kbridge", "vectors", p) }

// with replaces field name's value in a copy of fields (or appends it).
func with(fields []string, name, value string) []string {
	out := append([]string(nil), fields...)
	for i := 0; i+1 < len(out); i += 2 {
		if out[i] == name {
			out[i+1] = value
			return out
		}
	}
	return append(out, name, value)
}

func without(fields []string, name string) []string {
	var out []string
	for i := 0; i+1 < len(fields); i += 2 {
		if fields[i] != name {
			out = append(out, fields[i], fields[i+1])
		}
	}
	return out
}

// vectorDefs are the test vectors. Each lives alone in a stream of its own
// ({vectors:<n>}, or that stream's replay stream), so that an implementation
// can write them all into Redis and read them back in any order.
func vectorDefs() []vdef {
	var vs []vdef
	n := 0
	ok := func(name string, fields []string, r *VectorRecord) {
		vs = append(vs, vdef{name: name, stream: stream(r.Partition), id: r.Offset + "-1", fields: fields, rec: r})
	}
	// next returns a fresh partition number for a vector.
	next := func() int { n++; return n }
	bad := func(name, why string, fields func(p int) []string) {
		p := next()
		vs = append(vs, vdef{name: name, stream: stream(p), id: "5-1", fields: fields(p), malformed: why})
	}

	p := next()
	ok("plain", base(p, "5", "key", "k", "value", "hello"), rec(p, "5", b("k"), b("hello")))
	p = next()
	ok("null key: the key field is absent", base(p, "5", "value", "v"), rec(p, "5", nil, b("v")))
	p = next()
	ok("empty key: present and empty", base(p, "5", "key", "", "value", "v"), rec(p, "5", b(""), b("v")))
	p = next()
	ok("tombstone: the value field is absent", base(p, "5", "key", "k"), rec(p, "5", b("k"), nil))
	p = next()
	ok("empty value: present and empty", base(p, "5", "key", "k", "value", ""), rec(p, "5", b("k"), b("")))
	p = next()
	ok("binary value: every byte, not UTF-8 (a client that decodes replies as text corrupts it)",
		base(p, "5", "key", "\x00\xff\xfe", "value", allBytesString()), rec(p, "5", b("\x00\xff\xfe"), b(allBytesString())))
	p = next()
	ok("value with CR, LF, NUL and a trailing newline", base(p, "5", "value", "line1\r\nline2\x00end\n"),
		rec(p, "5", nil, b("line1\r\nline2\x00end\n")))
	p = next()
	ok("UTF-8 value", base(p, "5", "value", "h\u00e9llo \u20ac\U0001F600"), rec(p, "5", nil, b("h\u00e9llo \u20ac\U0001F600")))
	p = next()
	ok("offset 0: ID 0-1", base(p, "0", "value", "first"), rec(p, "0", nil, b("first")))
	p = next()
	ok("largest offset", base(p, "9223372036854775807", "value", "last"), rec(p, "9223372036854775807", nil, b("last")))
	ok("largest partition", base(2147483647, "5", "value", "v"), rec(2147483647, "5", nil, b("v")))
	p = next()
	r := rec(p, "5", nil, b("v"))
	r.Timestamp = "-1"
	ok("negative timestamp (Kafka: no timestamp)", with(base(p, "5", "value", "v"), "timestamp", "-1"), r)
	p = next()
	r = rec(p, "5", nil, b("v"))
	r.Timestamp = "0"
	ok("timestamp 0", with(base(p, "5", "value", "v"), "timestamp", "0"), r)
	p = next()
	ok("headers: repeated names, a null value, an empty value, binary",
		base(p, "5", "value", "v", "headers", `[["trace-id","YWJj"],["dup",null],["dup",""],["dup","AP8="]]`),
		rec(p, "5", nil, b("v"), hdr("trace-id", b("abc")), hdr("dup", nil), hdr("dup", b("")), hdr("dup", b("\x00\xff"))))
	p = next()
	ok("header names: empty, escapes, non-ASCII, NUL, a surrogate pair",
		base(p, "5", "headers", `[["",null],["\"q\u0022\\",null],["tab\t\/",null],["\u00e9\u20ac",null],["\u0000nul",null],["\ud83d\ude00",null]]`),
		rec(p, "5", nil, nil, hdr("", nil), hdr(`"q"\`, nil), hdr("tab\t/", nil), hdr("\u00e9\u20ac", nil), hdr("\x00nul", nil), hdr("\U0001F600", nil)))
	p = next()
	ok("header name with a lone surrogate escape: U+FFFD in its place (as Go's encoding/json does)",
		base(p, "5", "headers", `[["\ud800x",null]]`), rec(p, "5", nil, nil, hdr("\uFFFDx", nil)))
	p = next()
	ok("headers: an empty list and JSON whitespace", base(p, "5", "value", "v", "headers", " [ ]\n"), rec(p, "5", nil, b("v")))
	p = next()
	ok("headers with JSON whitespace between tokens", base(p, "5", "headers", "[ [ \"a\" ,\r\n\"YQ==\" ] ]"), rec(p, "5", nil, nil, hdr("a", b("a"))))
	p = next()
	ok("unknown and dead-letter fields are ignored", base(p, "5", "value", "v", "x-trace", "abc", "dlq_reason", "malformed", "dlq_group", "other"),
		rec(p, "5", nil, b("v")))
	p = next()
	ok("fields in another order", []string{"value", "v", "offset", "5", "timestamp", "1700000000000", "partition", strconv.Itoa(p), "key", "k", "topic", "vectors"},
		rec(p, "5", b("k"), b("v")))
	p = next()
	ok("a field repeated (only another program writes that): the last one counts", base(p, "5", "value", "first", "value", "second"),
		rec(p, "5", nil, b("second")))
	p = next()
	r = rec(p, "7", nil, b("again"))
	r.Replayed = true
	vs = append(vs, vdef{name: "replayed dead letter: its ID is not an offset, the offset field is",
		stream: ReplayKey(stream(p)), id: "1718000000000-0",
		fields: base(p, "7", "value", "again", "dlq_reason", "max-deliveries", "dlq_error", "boom", "dlq_group", "workers",
			"dlq_consumer", "c1", "dlq_deliveries", "5", "dlq_stream", stream(p), "dlq_id", "7-1", "dlq_time", "1718000000000"),
		rec: r})
	p = next()
	r = rec(p, "5", nil, nil)
	r.Topic = "orders.v2-eu_1"
	vs = append(vs, vdef{name: "topic with dots, dashes and underscores", stream: StreamKey("kbridge", "orders.v2-eu_1", p), id: "5-1",
		fields: []string{"topic", "orders.v2-eu_1", "partition", strconv.Itoa(p), "offset", "5", "timestamp", "1700000000000"}, rec: r})

	for _, f := range []string{"topic", "partition", "offset", "timestamp"} {
		bad("missing "+f, "field "+f+" is missing", func(p int) []string { return without(base(p, "5"), f) })
	}
	bad("empty topic", "topic is empty", func(p int) []string { return with(base(p, "5"), "topic", "") })
	for _, v := range []string{"-1", "01", "+1", "1.0", " 1", "", "2147483648", "0x1"} {
		bad("partition "+strconv.Quote(v), "partition is not a canonical decimal 0..2147483647", func(p int) []string { return with(base(p, "5"), "partition", v) })
	}
	for _, v := range []string{"abc", "-5", "05", "", "9223372036854775808", "5-1", "5.0"} {
		bad("offset "+strconv.Quote(v), "offset is not a canonical decimal 0..9223372036854775807", func(p int) []string { return with(base(p, "5"), "offset", v) })
	}
	for _, v := range []string{"1.5", "-0", "1e3", "", "+1", "01", "9223372036854775808", "2024-01-01T00:00:00Z"} {
		bad("timestamp "+strconv.Quote(v), "timestamp is not a canonical decimal int64", func(p int) []string { return with(base(p, "5"), "timestamp", v) })
	}
	p = next()
	vs = append(vs, vdef{name: "ID is not <offset>-1: another offset", stream: stream(p), id: "6-1", fields: base(p, "5"),
		malformed: "in a partition stream the ID must be <offset>-1"})
	p = next()
	vs = append(vs, vdef{name: "ID is not <offset>-1: another sequence number", stream: stream(p), id: "5-2", fields: base(p, "5"),
		malformed: "in a partition stream the ID must be <offset>-1"})
	p = next()
	vs = append(vs, vdef{name: "ID is a timestamp (XADD *)", stream: stream(p), id: "1718000000000-0", fields: base(p, "5"),
		malformed: "in a partition stream the ID must be <offset>-1"})
	bad("topic of another stream", "topic and partition must be those of the stream key", func(p int) []string { return with(base(p, "5"), "topic", "orders") })
	bad("partition of another stream", "topic and partition must be those of the stream key", func(p int) []string { return with(base(p, "5"), "partition", strconv.Itoa(p+1000)) })
	for _, h := range []struct{ name, value string }{
		{"not JSON", "a=b"},
		{"JSON null", "null"},
		{"an object", `{"a":"YQ=="}`},
		{"a list of strings", `["a","YQ=="]`},
		{"truncated", `[["a","YQ=="]`},
		{"trailing comma", `[["a","YQ=="],]`},
		{"trailing garbage", `[] x`},
		{"a pair of one", `[["a"]]`},
		{"a pair of three", `[["a","YQ==","x"]]`},
		{"a null pair", `[null]`},
		{"a null name", `[[null,"YQ=="]]`},
		{"a number name", `[[1,"YQ=="]]`},
		{"a number value", `[["a",1]]`},
		{"value without padding", `[["a","YQ"]]`},
		{"value URL-safe alphabet", `[["a","_w=="]]`},
		{"value with a line break", `[["a","YQ==\n"]]`},
		{"value with a space", `[["a","YQ== "]]`},
		{"value with non-zero padding bits", `[["a","YR=="]]`},
		{"value not base64", `[["a","not base64!"]]`},
		{"not UTF-8", "[[\"\xff\",null]]"},
		{"a raw control character in a string", "[[\"a\x01\",null]]"},
		{"a byte order mark", "\ufeff[]"},
		{"single quotes", `[['a','YQ==']]`},
	} {
		bad("headers "+h.name, "headers must be a JSON list of [name, canonical padded standard base64 or null] pairs", func(p int) []string {
			return base(p, "5", "headers", h.value)
		})
	}
	p = next()
	r = rec(p, "5", nil, nil)
	r.Timestamp = "-9223372036854775808"
	ok("smallest timestamp (int64 minimum)", with(base(p, "5"), "timestamp", "-9223372036854775808"), r)
	p = next()
	r = rec(p, "5", nil, nil)
	r.Timestamp = "9223372036854775807"
	ok("largest timestamp (int64 maximum)", with(base(p, "5"), "timestamp", "9223372036854775807"), r)
	bad("timestamp below int64", "timestamp is not a canonical decimal int64", func(p int) []string {
		return with(base(p, "5"), "timestamp", "-9223372036854775809")
	})
	p = next()
	ok("header value written with JSON escapes", base(p, "5", "headers", `[["a","\u0059\u0051\u003d\u003d"]]`), rec(p, "5", nil, nil, hdr("a", b("a"))))
	p = next()
	ok("header names: a lone high surrogate before a pair, a low one before a high one",
		base(p, "5", "headers", `[["\ud800\ud83d\ude00",null],["\ude00\ud83d",null]]`),
		rec(p, "5", nil, nil, hdr("\uFFFD\U0001F600", nil), hdr("\uFFFD\uFFFD", nil)))
	p = next()
	ok("header name with a raw U+2028", base(p, "5", "headers", "[[\"a\u2028b\",null]]"), rec(p, "5", nil, nil, hdr("a\u2028b", nil)))
	p = next()
	ok("unknown field with a binary name", base(p, "5", "\xff\xfe\x00", "\x00"), rec(p, "5", nil, nil))
	p = next()
	ok("topic repeated: the last one counts", append([]string{"topic", "orders"}, base(p, "5")...), rec(p, "5", nil, nil))
	p = next()
	ok("headers repeated: a bad one, then a good one (the last counts)", base(p, "5", "headers", "bad", "headers", `[["a",null]]`),
		rec(p, "5", nil, nil, hdr("a", nil)))
	bad("headers repeated: a good one, then a bad one (the last counts)", "headers must be a JSON list of [name, canonical padded standard base64 or null] pairs",
		func(p int) []string { return base(p, "5", "headers", `[["a",null]]`, "headers", "bad") })
	for _, h := range []struct{ name, value string }{
		{"present and empty", ""},
		{"a NaN value", `[["a",NaN]]`},
		{"an Infinity element", `[["a",null],Infinity]`},
		{"a true value", `[["a",true]]`},
		{"followed by a NUL", "[]\x00"},
		{"value with padding inside", `[["a","YQ==YQ=="]]`},
		{"value ====", `[["a","===="]]`},
		{"UTF-16 with a byte order mark", "\xff\xfe[\x00]\x00"},
		{"nested 1000 deep (a decoder must not crash on it)", strings.Repeat("[", 1000) + strings.Repeat("]", 1000)},
		{"nested 10001 deep (beyond the 10000 of Go's encoding/json)", strings.Repeat("[", 10001) + strings.Repeat("]", 10001)},
	} {
		bad("headers "+h.name, "headers must be a JSON list of [name, canonical padded standard base64 or null] pairs", func(p int) []string {
			return base(p, "5", "headers", h.value)
		})
	}
	for _, k := range []struct{ name, part string }{{"a leading zero", "0%d"}, {"a plus sign", "+%d"}} {
		p = next()
		vs = append(vs, vdef{name: "stream key partition with " + k.name, stream: "kbridge:{vectors:" + fmt.Sprintf(k.part, p) + "}", id: "5-1",
			fields: base(p, "5"), malformed: "not a partition stream key: its partition is not a canonical decimal (a worker never reads it: rule 2 skips it)"})
	}
	p = next()
	extra := base(p, "5")
	for i := 0; len(extra)/2 < MaxFields; i++ {
		extra = append(extra, fmt.Sprintf("x-%04d", i), "y")
	}
	ok(fmt.Sprintf("%d fields (the most allowed) and dead-letter fields beside them", MaxFields),
		append(extra, "dlq_reason", "malformed", "dlq_group", "other"), rec(p, "5", nil, nil))
	bad(fmt.Sprintf("%d fields: more than the %d allowed", MaxFields+1, MaxFields), fmt.Sprintf("more than %d fields (dlq_* ones aside)", MaxFields),
		func(p int) []string {
			f := base(p, "5")
			for i := 0; len(f)/2 <= MaxFields; i++ {
				f = append(f, fmt.Sprintf("x-%04d", i), "y")
			}
			return f
		})
	p = next()
	vs = append(vs, vdef{name: "replayed entry with a bad offset", stream: ReplayKey(stream(p)), id: "1718000000000-0",
		fields: with(base(p, "5", "dlq_group", "workers"), "offset", "x"), malformed: "offset is not a canonical decimal 0..9223372036854775807"})
	return vs
}

func buildVectorFile() VectorFile {
	f := VectorFile{
		Comment: []string{
			"Test vectors of the kbridge wire contract, version 1 (docs/wire.md). Generated by internal/wire/vectors_test.go (go test ./internal/wire -run TestVectors -update); do not edit by hand.",
			"Each vector is one stream entry: the key it is read from (prefix \"kbridge\"), its ID, and its fields in the order Redis returns them, each [base64(name), base64(value)] (RFC 4648 standard alphabet, padded) so that any byte survives.",
			"A vector has either \"record\" (what a worker must decode: offset and timestamp as decimal strings, key and value base64 or null for a Kafka null, headers as [name, base64 value or null] pairs) or \"malformed\" (why a worker must dead-letter it with reason malformed, without handling it).",
		},
		Prefix: "kbridge",
	}
	for _, d := range vectorDefs() {
		v := Vector{Name: d.name, Stream: d.stream, ID: d.id, Record: d.rec, Malformed: d.malformed}
		for i := 0; i+1 < len(d.fields); i += 2 {
			v.Fields = append(v.Fields, [2]string{
				base64.StdEncoding.EncodeToString([]byte(d.fields[i])),
				base64.StdEncoding.EncodeToString([]byte(d.fields[i+1])),
			})
		}
		f.Vectors = append(f.Vectors, v)
	}
	return f
}

func marshalVectors(f VectorFile) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(f); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

// TestVectorsFile: testdata/vectors.json is what vectorDefs say (run with
// -update after changing them), and the vectors are sound: names unique,
// each in a stream of its own, record or malformed.
func TestVectorsFile(t *testing.T) {
	want := marshalVectors(buildVectorFile())
	if *update {
		if err := os.WriteFile("testdata/vectors.json", want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile("testdata/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("testdata/vectors.json differs from vectorDefs: run go test ./internal/wire -run TestVectorsFile -update")
	}
	if !bytes.Equal(VectorsJSON(), got) {
		t.Fatal("the embedded vectors differ from testdata/vectors.json (rebuild)")
	}
	f, err := Vectors()
	if err != nil {
		t.Fatal(err)
	}
	names, streams := map[string]bool{}, map[string]bool{}
	nrec, nbad := 0, 0
	for _, v := range f.Vectors {
		if names[v.Name] || streams[v.Stream] {
			t.Errorf("vector %q: name or stream %s used twice", v.Name, v.Stream)
		}
		names[v.Name], streams[v.Stream] = true, true
		if (v.Record == nil) == (v.Malformed == "") {
			t.Errorf("vector %q: want exactly one of record and malformed", v.Name)
		}
		if v.Record != nil {
			nrec++
		} else {
			nbad++
		}
	}
	t.Logf("%d vectors: %d records, %d malformed", len(f.Vectors), nrec, nbad)
}

// TestVectors: DecodeEntry (what kbridge worker runs on every entry) decodes
// each vector to its record, and refuses each malformed one with an error
// wrapping ErrMalformed. examples/python's decoder is held to the same file
// (internal/conformance TestPythonDecoderVectors).
func TestVectors(t *testing.T) {
	f, err := Vectors()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range f.Vectors {
		t.Run(v.Name, func(t *testing.T) {
			got, err := DecodeVector(v)
			if v.Malformed != "" {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("want malformed (%s), got %v and %+v", v.Malformed, err, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("want %+v, got %v", *v.Record, err)
			}
			if !reflect.DeepEqual(got, *v.Record) {
				t.Fatalf("want %s\n got %s", show(*v.Record), show(got))
			}
		})
	}
}

func show(r VectorRecord) string {
	b, _ := json.Marshal(r)
	return string(b)
}

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if *update {
		fmt.Println("testdata/vectors.json rewritten")
	}
	os.Exit(code)
}
