package wire

import (
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"fmt"
)

// vectorsJSON is testdata/vectors.json: the wire contract's test vectors,
// shared with workers in other languages (examples/python reads the file).
//
//go:embed testdata/vectors.json
var vectorsJSON []byte

// VectorsJSON returns the test vectors file (testdata/vectors.json) as it is
// published.
func VectorsJSON() []byte { return vectorsJSON }

// VectorFile is the layout of testdata/vectors.json.
type VectorFile struct {
	Comment []string `json:"comment"`
	// Prefix is the key prefix of every Stream below; an implementation
	// that writes the vectors into Redis replaces it with its own.
	Prefix  string   `json:"prefix"`
	Vectors []Vector `json:"vectors"`
}

// Vector is one stream entry as Redis returns it, with its meaning: either
// Record (what a worker must decode) or Malformed (why a worker must
// dead-letter it, reason "malformed", without handling it).
type Vector struct {
	Name   string `json:"name"`
	Stream string `json:"stream"` // the key the entry is read from
	ID     string `json:"id"`
	// Fields are the entry's field/value pairs in the order Redis returns
	// them, each as [base64(name), base64(value)] (standard, padded).
	Fields    [][2]string   `json:"fields"`
	Record    *VectorRecord `json:"record,omitempty"`
	Malformed string        `json:"malformed,omitempty"`
}

// VectorRecord is a decoded entry. Offset and Timestamp are decimal strings
// (JSON numbers lose precision above 2^53 in some languages); Key and Value
// are base64, or null for a Kafka null; Headers are [name, base64 value or
// null] pairs, in order, empty when there are none.
type VectorRecord struct {
	Topic     string       `json:"topic"`
	Partition int          `json:"partition"`
	Offset    string       `json:"offset"`
	Timestamp string       `json:"timestamp"`
	Key       *string      `json:"key"`
	Value     *string      `json:"value"`
	Headers   [][2]*string `json:"headers"`
	Replayed  bool         `json:"replayed"`
}

// Vectors parses the embedded test vectors.
func Vectors() (VectorFile, error) {
	var f VectorFile
	if err := json.Unmarshal(vectorsJSON, &f); err != nil {
		return f, fmt.Errorf("wire: testdata/vectors.json: %w", err)
	}
	return f, nil
}

// Values returns the vector's fields as go-redis returns them in
// XMessage.Values (a repeated field name: the last one counts).
func (v Vector) Values() (map[string]any, error) {
	m := make(map[string]any, len(v.Fields))
	for i, kv := range v.Fields {
		name, err := base64.StdEncoding.DecodeString(kv[0])
		if err != nil {
			return nil, fmt.Errorf("vector %s field %d name: %w", v.Name, i, err)
		}
		val, err := base64.StdEncoding.DecodeString(kv[1])
		if err != nil {
			return nil, fmt.Errorf("vector %s field %d value: %w", v.Name, i, err)
		}
		m[string(name)] = string(val)
	}
	return m, nil
}

// Pairs returns the vector's fields as field/value arguments for XADD, in
// order.
func (v Vector) Pairs() ([]any, error) {
	out := make([]any, 0, 2*len(v.Fields))
	for i, kv := range v.Fields {
		name, err := base64.StdEncoding.DecodeString(kv[0])
		if err != nil {
			return nil, fmt.Errorf("vector %s field %d name: %w", v.Name, i, err)
		}
		val, err := base64.StdEncoding.DecodeString(kv[1])
		if err != nil {
			return nil, fmt.Errorf("vector %s field %d value: %w", v.Name, i, err)
		}
		out = append(out, string(name), string(val))
	}
	return out, nil
}

// RecordOf returns the VectorRecord form of a decoded record.
func RecordOf(r Record, replayed bool) VectorRecord {
	b64 := func(b []byte) *string {
		if b == nil {
			return nil
		}
		s := base64.StdEncoding.EncodeToString(b)
		return &s
	}
	vr := VectorRecord{
		Topic: r.Topic, Partition: r.Partition,
		Offset:    fmt.Sprint(r.Offset),
		Timestamp: fmt.Sprint(r.Time.UnixMilli()),
		Key:       b64(r.Key), Value: b64(r.Value),
		Headers:  [][2]*string{},
		Replayed: replayed,
	}
	for _, h := range r.Headers {
		name := h.Key
		vr.Headers = append(vr.Headers, [2]*string{&name, b64(h.Value)})
	}
	return vr
}

// DecodeVector decodes a vector as a worker decodes the entry (DecodeEntry).
func DecodeVector(v Vector) (VectorRecord, error) {
	values, err := v.Values()
	if err != nil {
		return VectorRecord{}, err
	}
	r, err := DecodeEntry(v.Stream, v.ID, values)
	if err != nil {
		return VectorRecord{}, err
	}
	return RecordOf(r, IsReplayKey(v.Stream)), nil
}
