// Package worker processes the records that the kbridge ingest appends to
// Redis streams: the Go handler API, and the runners behind "kbridge worker"
// (ExecHandler, HTTPHandler).
//
// A Worker is one consumer in one worker group. It discovers the partition
// streams from the registry key (new partitions are picked up while it runs),
// reads them with XREADGROUP — the streams that had entries in one call,
// the idle ones probed together, so that reading costs what the busy
// streams cost — and runs at most Config.Concurrency handlers at a time,
// shared between the streams by handler time (sched.go): a slow or failing
// partition cannot take the slots of the others. Config.ReadAhead entries
// are read ahead of the handlers. Acknowledgements are batched.
//
// Crash safety (invariant 9 of the design): every entry a worker holds is
// pending in Redis under its consumer until it is acknowledged. While a
// handler runs, the worker extends its lease (XCLAIM JUSTID to itself every
// VisibilityTimeout/3), so no other worker steals it; the entries of a worker
// that died are reclaimed by the others with XAUTOCLAIM once they have been
// idle for VisibilityTimeout — even while they are saturated: reclaimed
// entries have room beyond the read-ahead. A consumer is only deleted when
// XPENDING shows it has nothing pending, inside the same Lua script.
//
// Failures: a handler error or panic leaves the entry pending and the worker
// retries it after an exponential backoff, during which the entry gives its
// handler slot back (it stays leased). The delivery count that Redis keeps
// for the entry is what the handler sees; each retry increments it (XCLAIM
// RETRYCOUNT). The dead letter is decided on runs: before each handler start
// but the first the worker records it in the group's runs hash of the
// stream (<stream>:runs:<group>, lua/start.lua), so that a delivery whose handler never
// started — an entry read ahead by a worker that died — costs nothing. The
// first delivery (count 1) starts without a script: its run is implied by
// the count, so the common path costs no Redis call before the handler, and
// the acknowledgement deletes no record. The price is one run at most: if
// the worker dies during that first run, the others do not know of it, so a
// record whose handler crashes its worker runs at most MaxDeliveries + 1
// times before it is dead-lettered (2 × MaxDeliveries in a group shared
// with workers that decide on delivery counts, whose runs are not recorded:
// docs/wire.md rule 8). The worker deletes the record of an entry it
// acknowledges or dead-letters, and every Config.RunsCleanupInterval those
// of entries no longer pending (lua/runsgc.lua). A RetryAfter error (the downstream is
// unavailable) pauses the entry's stream and counts no delivery nor run, for
// up to Config.MaxTransientTime. After Config.MaxDeliveries runs without an
// outcome the entry is written to the partition's dead-letter stream
// together with its last error, and acknowledged in the same Lua script, so
// the ingest's commit moves on.
// ListDeadLetters, ReplayDeadLetters and DeleteDeadLetters are what
// "kbridge dlq" is built on.
//
// The whole wire contract, with a worker written in shell, is in docs/wire.md.
package worker
