package wire

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Field names of a stream entry. See docs/wire.md.
const (
	FieldTopic     = "topic"
	FieldPartition = "partition"
	FieldOffset    = "offset"
	FieldTimestamp = "timestamp" // Kafka record time, Unix milliseconds
	FieldKey       = "key"       // absent when the Kafka key is null
	FieldValue     = "value"     // absent when the Kafka value is null (tombstone)
	FieldHeaders   = "headers"   // absent when there are none; JSON [["name","<base64>"|null],...]
)

// Header is one Kafka record header. Names may repeat; order is kept. A nil
// Value is a null header value.
type Header struct {
	Key   string
	Value []byte
}

// Record is one Kafka record as it travels through Redis. A nil Key or Value
// is a Kafka null; a non-nil empty slice is an empty byte string.
type Record struct {
	Topic     string
	Partition int
	Offset    int64
	Time      time.Time
	Key       []byte
	Value     []byte
	Headers   []Header
}

// MaxFields is the most fields an entry may have, not counting the dead-letter
// fields (dlq_*): an entry with more is malformed. The scripts pass a dead
// letter's fields as one XADD (deadletter.lua, replay.lua), and the Lua of
// Redis 7.0 refuses to unpack 8000 values or more: with this cap every valid
// entry can be dead-lettered and replayed (at most 2*(1000+8) values), and a
// malformed one too, with the contract's fields only (DeadLetterFields).
// Fields are counted by name, as a map-reading client sees them (a name
// written twice counts once).
const MaxFields = 1000

// ErrMalformed is wrapped by every Decode error: the entry does not follow the
// wire contract. Workers dead-letter such entries with the error as reason.
var ErrMalformed = errors.New("malformed entry")

// AppendFields appends the entry's field/value pairs, ready for XADD, to dst.
func (r *Record) AppendFields(dst []any) []any {
	dst = append(dst,
		FieldTopic, r.Topic,
		FieldPartition, strconv.Itoa(r.Partition),
		FieldOffset, strconv.FormatInt(r.Offset, 10),
		FieldTimestamp, strconv.FormatInt(r.Time.UnixMilli(), 10))
	if r.Key != nil {
		dst = append(dst, FieldKey, string(r.Key))
	}
	if r.Value != nil {
		dst = append(dst, FieldValue, string(r.Value))
	}
	if len(r.Headers) > 0 {
		dst = append(dst, FieldHeaders, encodeHeaders(r.Headers))
	}
	return dst
}

func encodeHeaders(hs []Header) string {
	pairs := make([][2]*string, len(hs))
	for i, h := range hs {
		k := h.Key
		pairs[i][0] = &k
		if h.Value != nil {
			v := base64.StdEncoding.EncodeToString(h.Value)
			pairs[i][1] = &v
		}
	}
	b, _ := json.Marshal(pairs) // strings and nulls only: cannot fail
	return string(b)
}

// Decode reads an entry's fields, as go-redis returns them in XMessage.Values,
// into a Record, by the rules of docs/wire.md ("Entries"): topic, partition,
// offset and timestamp are required, numbers are canonical decimals, headers
// are a JSON list of [name, canonical padded standard base64 | null] pairs.
// Errors wrap ErrMalformed and say which field is wrong. Decode does not see
// the entry's stream and ID: a worker uses DecodeEntry.
func Decode(values map[string]any) (Record, error) {
	var r Record
	str := func(name string) (string, bool, error) {
		v, ok := values[name]
		if !ok {
			return "", false, nil
		}
		s, ok := v.(string)
		if !ok {
			return "", true, fmt.Errorf("%w: field %q is %T, want a string", ErrMalformed, name, v)
		}
		return s, true, nil
	}
	need := func(name string) (string, error) {
		s, ok, err := str(name)
		if err == nil && !ok {
			err = fmt.Errorf("%w: field %q is missing", ErrMalformed, name)
		}
		return s, err
	}
	if n := countFields(values); n > MaxFields {
		return r, fmt.Errorf("%w: %d fields (not counting dlq_* ones), more than the %d allowed", ErrMalformed, n, MaxFields)
	}
	var err error
	if r.Topic, err = need(FieldTopic); err != nil {
		return r, err
	}
	if r.Topic == "" {
		return r, fmt.Errorf("%w: field %q is empty", ErrMalformed, FieldTopic)
	}
	s, err := need(FieldPartition)
	if err != nil {
		return r, err
	}
	p, ok := parseDecimal(s, false)
	if !ok || p > math.MaxInt32 {
		return r, fmt.Errorf("%w: field %q = %q is not a partition number (a decimal 0..2147483647, no sign or leading zero)", ErrMalformed, FieldPartition, s)
	}
	r.Partition = int(p)
	if s, err = need(FieldOffset); err != nil {
		return r, err
	}
	if r.Offset, ok = parseDecimal(s, false); !ok {
		return r, fmt.Errorf("%w: field %q = %q is not an offset (a decimal 0..9223372036854775807, no sign or leading zero)", ErrMalformed, FieldOffset, s)
	}
	if s, err = need(FieldTimestamp); err != nil {
		return r, err
	}
	ms, ok := parseDecimal(s, true)
	if !ok {
		return r, fmt.Errorf("%w: field %q = %q is not Unix milliseconds (a decimal, optionally negative, no leading zero)", ErrMalformed, FieldTimestamp, s)
	}
	r.Time = time.UnixMilli(ms)
	if s, ok, err := str(FieldKey); err != nil {
		return r, err
	} else if ok {
		r.Key = []byte(s)
	}
	if s, ok, err := str(FieldValue); err != nil {
		return r, err
	} else if ok {
		r.Value = []byte(s)
	}
	if s, ok, err := str(FieldHeaders); err != nil {
		return r, err
	} else if ok {
		if r.Headers, err = decodeHeaders(s); err != nil {
			return r, err
		}
	}
	return r, nil
}

// DecodeEntry decodes the entry id of stream (a partition stream, or its
// replay stream): Decode, and the entry's topic and partition must be those
// of the stream key, and in a partition stream its ID must be
// EntryID(offset). A replay stream's IDs are not offsets (the offset is the
// field's). Errors wrap ErrMalformed.
func DecodeEntry(stream, id string, values map[string]any) (Record, error) {
	r, err := Decode(values)
	if err != nil {
		return r, err
	}
	_, topic, partition, err := ParseStreamKey(PartitionStreamOf(stream))
	if err != nil {
		return r, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if r.Topic != topic || r.Partition != partition {
		return r, fmt.Errorf("%w: topic %q partition %d is not that of the stream %s", ErrMalformed, r.Topic, r.Partition, stream)
	}
	if !IsReplayKey(stream) && id != EntryID(r.Offset) {
		return r, fmt.Errorf("%w: entry ID %s is not %s (offset %d)", ErrMalformed, id, EntryID(r.Offset), r.Offset)
	}
	return r, nil
}

// countFields returns how many fields of values are not dead-letter fields.
func countFields(values map[string]any) int {
	n := 0
	for name := range values {
		if !IsDLQField(name) {
			n++
		}
	}
	return n
}

// parseDecimal parses a canonical decimal int64: digits only, no leading
// zero (but "0"), a leading '-' only if signed (and not "-0").
func parseDecimal(s string, signed bool) (int64, bool) {
	digits := s
	if signed && strings.HasPrefix(s, "-") {
		digits = s[1:]
		if digits == "0" {
			return 0, false
		}
	}
	if digits == "" || len(digits) > 1 && digits[0] == '0' {
		return 0, false
	}
	for i := 0; i < len(digits); i++ {
		if digits[i] < '0' || digits[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

func decodeHeaders(s string) ([]Header, error) {
	if !utf8.ValidString(s) {
		return nil, fmt.Errorf("%w: field %q is not valid UTF-8", ErrMalformed, FieldHeaders)
	}
	if t := strings.TrimLeft(s, " \t\r\n"); !strings.HasPrefix(t, "[") {
		return nil, fmt.Errorf("%w: field %q is not a JSON list of [name, base64] pairs", ErrMalformed, FieldHeaders)
	}
	var pairs [][]*string
	if err := json.Unmarshal([]byte(s), &pairs); err != nil {
		return nil, fmt.Errorf("%w: field %q is not a JSON list of [name, base64] pairs: %v", ErrMalformed, FieldHeaders, err)
	}
	hs := make([]Header, 0, len(pairs))
	for i, p := range pairs {
		if len(p) != 2 || p[0] == nil {
			return nil, fmt.Errorf("%w: header %d is not a [name, base64] pair", ErrMalformed, i)
		}
		h := Header{Key: *p[0]}
		if p[1] != nil {
			v, err := base64.StdEncoding.DecodeString(*p[1])
			if err == nil && base64.StdEncoding.EncodeToString(v) != *p[1] {
				err = errors.New("not canonical (standard alphabet, = padding, zero padding bits, no line breaks)")
			}
			if err != nil {
				return nil, fmt.Errorf("%w: header %q value is not base64: %v", ErrMalformed, h.Key, err)
			}
			h.Value = v
			if h.Value == nil {
				h.Value = []byte{}
			}
		}
		hs = append(hs, h)
	}
	return hs, nil
}
