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
// moves past every complete batch the broker returned — transaction
// markers, aborted transactions (read_committed), and records compacted
// away inside a batch (a batch's last offset survives compaction and is
// used) — and never further. So a caller that has processed everything
// Read returned may commit Next, and a partition whose tail is a commit
// marker reaches the log end instead of fetching the marker forever. In
// read_committed the broker stops at the last stable offset, so records of
// an open transaction are not returned until it ends.
//
// An answer with no records below the partition's bound (last stable
// offset, or high watermark in read_uncommitted) moves nothing: Kafka
// answers so while records exist — a tiered-storage read not done within
// remote.fetch.max.wait.ms, a remote fetch quota, a preferred read replica
// (KIP-392; its answer is recognised and the leader asked again: kfetch
// reads from leaders only and sends no rack ID). Such a partition is asked
// again after 20ms, doubling while the answers stay empty, up to MaxWait,
// so it costs no more than a partition at its log end (Stats.EmptyAnswers).
// Ranges compacted away between batches need no such rule: the broker
// returns the next batch after them; and Kafka's cleaner leaves the active
// segment and each producer's last batch alone, so a partition's tail is
// always a batch that moves Next to the log end.
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
// A response with a throttle time (KIP-219) holds every request to that
// broker until it has passed.
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
// batch whatever its size), and each result being read by the decompressed
// size of one batch when its batches decompress to more than the fetcher
// has learned: it learns what a fetched byte costs from the results read to
// the end, following a higher cost at once and a lower one slowly. A
// legitimate batch is read whatever its decompressed size against the
// budget, so one batch may exceed the budget by up to Config.BatchMaxBytes
// (max(budget, 64 MiB) by default): that limit is a zip-bomb guard only. A
// batch decompressing beyond it is reported as a *CorruptError with
// TooLarge set, Limit and Compressed giving the sizes, and the partition
// stops there until SetOffset: its caller should say which limit to raise.
//
// Partitions that got nothing because a request's byte limit ran out go
// first in the next request, and the order rotates, so every partition gets
// its turn. Buffers are pooled; decoding allocates per chunk, not per
// record.
//
// # Errors and order
//
// If Read meets a record it cannot decode, the partition stops at that
// record (Next moves back to it, the result fetched ahead is dropped) until
// SetOffset — whatever Pause or Resume happened meanwhile. Take a
// partition's next Result only after reading the previous one to the end:
// a Result already taken when an earlier one fails is the caller's to
// drop.
//
// # Limits
//
//   - No log truncation detection (KIP-320): fetches carry no leader epoch
//     (CurrentLeaderEpoch -1) and no OffsetForLeaderEpoch check is made.
//     After an unclean leader election truncates a partition below the
//     position, the new leader answers OFFSET_OUT_OF_RANGE if the position
//     is past its log end; records it writes later at offsets below the
//     position are not fetched. Kafka's Java consumer detects this; here
//     it is left to min.insync.replicas and unclean.leader.election.enable
//     (false by default).
//   - Fetch sessions (KIP-227) are not used: every request lists its
//     partitions in full.
//   - Fetches go to leaders only (no follower fetching, KIP-392).
//   - The decompression cap bounds this package's buffers; the zstd
//     decoder of kafka-go keeps its own window buffer beside them (a few
//     MiB for what Kafka producers write).
package kfetch
