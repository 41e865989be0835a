package wire

import (
	"strconv"
	"testing"
	"time"
)

func benchRecord(size int, headers bool) Record {
	r := Record{Topic: "orders", Partition: 7, Offset: 123456789, Time: time.UnixMilli(1700000000000),
		Key: []byte("customer-42"), Value: make([]byte, size)}
	if headers {
		r.Headers = []Header{{Key: "trace-id", Value: []byte("0af7651916cd43dd8448eb211c80319c")}, {Key: "source", Value: []byte("checkout")}}
	}
	return r
}

// BenchmarkAppendFields is the encode side of the codec: the XADD field list
// of one record, as the ingest builds it for every record it appends.
func BenchmarkAppendFields(b *testing.B) {
	for _, c := range []struct {
		size    int
		headers bool
	}{{100, false}, {1024, false}, {100, true}} {
		name := strconv.Itoa(c.size) + "B"
		if c.headers {
			name += "+headers"
		}
		b.Run(name, func(b *testing.B) {
			r := benchRecord(c.size, c.headers)
			buf := make([]any, 0, 16)
			b.ReportAllocs()
			b.SetBytes(int64(c.size))
			for b.Loop() {
				buf = r.AppendFields(buf[:0])
			}
		})
	}
}

// BenchmarkDecode is the decode side: what a worker does with every entry
// it reads (go-redis hands the fields over as a map of strings).
func BenchmarkDecode(b *testing.B) {
	for _, c := range []struct {
		size    int
		headers bool
	}{{100, false}, {1024, false}, {100, true}} {
		name := strconv.Itoa(c.size) + "B"
		if c.headers {
			name += "+headers"
		}
		b.Run(name, func(b *testing.B) {
			r := benchRecord(c.size, c.headers)
			f := r.AppendFields(nil)
			values := map[string]any{}
			for i := 0; i+1 < len(f); i += 2 {
				values[f[i].(string)] = f[i+1]
			}
			b.ReportAllocs()
			b.SetBytes(int64(c.size))
			for b.Loop() {
				if _, err := Decode(values); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
