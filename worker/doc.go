// Package worker processes the records that the kbridge ingest appends to
// Redis streams: the Go handler API, and the runners behind "kbridge worker"
// (ExecHandler, HTTPHandler).
//
// A Worker is one consumer in one worker group. It discovers the partition
// streams from the registry key (new partitions are picked up while it runs),
// reads all of them with XREADGROUP, a bounded number per stream per read so
// that a busy partition cannot starve the others, and runs at most
// Config.Concurrency handlers at a time. Acknowledgements are batched.
//
// Crash safety (invariant 9 of the design): every entry a worker holds is
// pending in Redis under its consumer until it is acknowledged. While a
// handler runs, the worker extends its lease (XCLAIM JUSTID to itself every
// VisibilityTimeout/3), so no other worker steals it; the entries of a worker
// that died are reclaimed by the others with XAUTOCLAIM once they have been
// idle for VisibilityTimeout. A consumer is only deleted when XPENDING shows
// it has nothing pending, inside the same Lua script.
//
// Failures: a handler error or panic leaves the entry pending and the worker
// retries it after an exponential backoff. The delivery count that Redis keeps
// for the entry is the authority; each retry increments it (XCLAIM
// RETRYCOUNT). After Config.MaxDeliveries deliveries the entry is written to
// the partition's dead-letter stream together with its last error, and
// acknowledged in the same Lua script, so the ingest's commit moves on.
// ListDeadLetters, ReplayDeadLetters and DeleteDeadLetters are what
// "kbridge dlq" is built on.
//
// The whole wire contract, with a worker written in shell, is in docs/wire.md.
package worker
