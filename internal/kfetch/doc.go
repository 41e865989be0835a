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
//		r, err := p.Next(ctx)        // ErrClosed once p.Close or Run ended
//		if err != nil { ... }
//		if r.Err != nil { ... p.SetOffset(offset) ... }   // e.g. kafka.OffsetOutOfRange
//		process(r.Records)           // valid until Release
//		commitable := r.Next         // every deliverable record below it is in Records
//		r.Release()
//	}
//
// Pause and Resume a partition for backpressure (a paused partition holds no
// memory); SetOffset to move it (after Redis lost data, or an error).
//
// # What a Result holds
//
// Result.Records are the deliverable records at offsets in [Offset, Next), in
// order, and the other offsets of that range hold nothing to deliver: Next
// moves past transaction markers, aborted transactions (read_committed),
// records compacted away (a batch's last offset survives compaction and is
// used), and ranges the broker reports empty below the last stable offset
// (read_committed) or high watermark (read_uncommitted). So a caller that
// has processed Records may commit Next, and a partition whose tail is a
// commit marker reaches the log end instead of fetching the marker forever.
// In read_committed the broker stops at the last stable offset, so records
// of an open transaction are not returned until it ends.
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
// Config.MemoryBytes bounds the bytes of record sets in flight (a request
// reserves its MaxBytes, at most what is left), buffered, and held by
// callers until Release, decompressed data and decoded records included.
// When the budget is used up, fetching waits for a Release. Partitions that
// got nothing because a request's byte limit ran out go first in the next
// request, and the order rotates, so every partition gets its turn.
// Buffers are pooled, and decoding allocates per result, not per record.
package kfetch
