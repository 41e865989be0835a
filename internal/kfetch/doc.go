// Package kfetch fetches many Kafka partitions from offsets the caller
// chooses, with few requests, inside a memory budget, delivering exactly
// what a consumer of the configured isolation level delivers.
//
// # Use
//
//	f, err := kfetch.New(kfetch.Config{Client: client})   // read_committed, 64 MiB
//	go f.Run(ctx)
//	p, err := f.Add("orders", 3, committed)
//	for {
//		r, err := p.Next(ctx)         // ErrClosed once p.Close or Run ended
//		if err != nil { ... }
//		for {
//			recs, err := r.Read(500) // valid until the next Read or Release
//			if err != nil || len(recs) == 0 { break }
//			process(recs)
//		}
//		if r.Err != nil { ... p.SetOffset(offset) ... } // e.g. kafka.OffsetOutOfRange
//		commitable := r.Next          // every deliverable record below it was read
//		r.Release()
//	}
//
// Taking a Result with Next starts the fetch of the one after it, so
// fetching overlaps with processing. Pause and Resume a partition for
// backpressure (a paused partition holds no memory); SetOffset to move it
// (after Redis lost data, or an error); Close to stop it.
//
// # What a Result holds
//
// Read returns the deliverable records at offsets in [Offset, Next), in
// order, and the other offsets of that range hold nothing to deliver: Next
// moves past transaction markers, aborted transactions (read_committed),
// records compacted away (a batch's last offset survives compaction and is
// used), and ranges the broker reports empty below the last stable offset
// (read_committed) or high watermark (read_uncommitted) — when the broker
// read the partition before any other partition of the request returned
// data, so it had to return a batch had there been one. So a caller that has
// processed everything Read returned may commit Next, and a partition whose
// tail is a commit marker reaches the log end instead of fetching the marker
// forever. In read_committed the broker stops at the last stable offset, so
// records of an open transaction are not returned until it ends.
//
// Aborted records are dropped the way Kafka's Java consumer does it: from
// the fetch response's aborted-transaction list, a transactional batch of a
// producer whose aborted transaction began at or before the batch's last
// offset is skipped until that producer's abort marker.
//
// # Requests
//
// Partitions are grouped by leader (found with a metadata request, asked
// again on NOT_LEADER, UNKNOWN_TOPIC_OR_PARTITION, connection errors and the
// like, which are retried with backoff and never reported as a Result). Per
// broker at most MaxInFlight requests are in flight, of which at most one
// holds only partitions at their log end, waiting up to MaxWait for data
// (a long poll): partitions with data never wait behind idle ones. A
// partition is fetched again only after the caller took its previous
// Result (prefetch depth one).
//
// Requests go through the kafka.Client's Transport (its connections, TLS,
// SASL) but read the fetch response themselves (protocol.RawExchanger):
// kafka-go's protocol.RecordSet decoder drops each batch's last offset delta
// and silently skips control batches. Record batches v2 are parsed here,
// CRC-checked, and decompressed with kafka-go's compress codecs; older
// message formats (Kafka < 0.11) are reported as a *CorruptError.
//
// # Memory
//
// Config.MemoryBytes bounds what fetched data holds: record sets in flight
// (a request reserves its size times the measured expansion, at most what is
// left), results buffered ahead, and results held by callers until Release,
// with their decoding buffers. Records are decoded lazily, a chunk per Read,
// and only the batch being read is decompressed (as Kafka's consumer does),
// so a Result holds its record set plus one chunk. When the budget is used
// up, fetching waits for a Release. Each request in flight can exceed it by
// one record batch larger than the partition limit (Kafka returns a first
// batch whatever its size), and a result by the decompressed size of one
// batch while the fetcher learns a topic's compression ratio, which it does
// from the first results released.
//
// Partitions that got nothing because a request's byte limit ran out go
// first in the next request, and the order rotates, so every partition gets
// its turn. Buffers are pooled; decoding allocates per chunk, not per
// record.
package kfetch
