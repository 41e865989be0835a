package kfetch

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/compress"
	"github.com/segmentio/kafka-go/protocol"

	"github.com/kbridge/kbridge/internal/wire"
)

// benchSet is a record set of about 1 MiB: batches of 100 records of size
// bytes, key "k<offset>", one header on every record.
func benchSet(b *testing.B, size int, codec int8) ([]byte, int) {
	b.Helper()
	var out []byte
	n := 0
	for base := int64(0); len(out) < 1<<20; base += 100 {
		rs := recs(base, seq(100)...)
		for i := range rs {
			rs[i].value = bytes.Repeat([]byte{'x'}, size)
			rs[i].headers = []wire.Header{{Key: "traceparent", Value: []byte("00-abc-def-01")}}
		}
		out = append(out, encodeBatch(b, tBatch{base: base, compression: codec, records: rs})...)
		n += 100
	}
	return out, n
}

// BenchmarkDecode compares, on the same record set, this package's scan and
// decode (in chunks of 500 records) with what the ingest did with kafka-go: protocol.RecordSet, then
// kafka.ReadAll of each key and value. ns/record and allocs/record are the
// figures to compare.
func BenchmarkDecode(b *testing.B) {
	for _, size := range []int{100, 1000} {
		for _, codec := range []int8{0, int8(compress.Lz4), int8(compress.Zstd)} {
			data, n := benchSet(b, size, codec)
			name := fmt.Sprintf("%dB/%s", size, compress.Compression(codec))
			b.Run(name+"/kfetch", func(b *testing.B) {
				var in interner
				var out scanOut
				b.SetBytes(int64(len(data)))
				b.ReportAllocs()
				for b.Loop() {
					scan(data, 0, true, nil, &out)
					c := cursor{topic: "t", batches: out.batches, intern: &in, last: -1}
					got := 0
					for {
						recs, err := c.read(500, func(int64) {}) // chunks as the ingest appends them
						if err != nil {
							b.Fatal(err)
						}
						if len(recs) == 0 {
							break
						}
						got += len(recs)
					}
					if got != n {
						b.Fatalf("%d records", got)
					}
					c.release()
				}
				perRecord(b, n)
			})
			b.Run(name+"/kafka-go", func(b *testing.B) {
				framed := binary.BigEndian.AppendUint32(nil, uint32(len(data)))
				framed = append(framed, data...)
				b.SetBytes(int64(len(data)))
				b.ReportAllocs()
				rd := bufio.NewReaderSize(nil, 64<<10)
				for b.Loop() {
					rd.Reset(bytes.NewReader(framed))
					var rs protocol.RecordSet
					if _, err := rs.ReadFrom(rd); err != nil {
						b.Fatal(err)
					}
					got := 0
					for {
						r, err := rs.Records.ReadRecord()
						if errors.Is(err, io.EOF) {
							break
						}
						if err != nil {
							b.Fatal(err)
						}
						rec := wire.Record{Topic: "t", Offset: r.Offset, Time: r.Time}
						rec.Key, _ = kafka.ReadAll(r.Key)
						rec.Value, _ = kafka.ReadAll(r.Value)
						for _, h := range r.Headers {
							rec.Headers = append(rec.Headers, wire.Header{Key: h.Key, Value: h.Value})
						}
						got++
					}
					if got != n {
						b.Fatalf("%d records", got)
					}
				}
				perRecord(b, n)
			})
		}
	}
}

func perRecord(b *testing.B, n int) {
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/record")
	b.ReportMetric(float64(n), "records/op")
}
