// Package conformance is the wire contract's conformance kit: it runs a
// worker command, written in any language, against a real Redis through
// scenarios that exercise the rules of docs/wire.md (plain handling,
// decoding, malformed entries, retries and dead letters, leases beside an
// aggressive reclaimer, reclaim of crashed workers, replayed dead letters,
// graceful shutdown) and reports which rules pass. "kbridge conformance" is
// its command line.
//
// # How the kit talks to the worker
//
// The kit starts the worker command (in a process group of its own, so that
// it can SIGKILL it with its children) with these environment variables, and
// without any other KBRIDGE_* or CONFORMANCE_* variable of its own
// environment:
//
//	KBRIDGE_REDIS_URL               redis://host:port/db of the Redis to use
//	KBRIDGE_PREFIX                  key prefix (a fresh one per scenario)
//	KBRIDGE_GROUP                   worker group ("workers")
//	KBRIDGE_CONSUMER                consumer name for this process, unique
//	KBRIDGE_VISIBILITY_TIMEOUT_MS   the group's visibility timeout
//	KBRIDGE_MAX_DELIVERIES          deliveries before a dead letter
//	KBRIDGE_BACKOFF_MS              first retry backoff (a hint: a worker may
//	                                instead leave a failure to be reclaimed)
//	KBRIDGE_SHUTDOWN_TIMEOUT_MS     how long SIGTERM waits for running handlers
//	CONFORMANCE_LOG                 file the handler appends its events to
//	CONFORMANCE_WORKER              label of this worker process, for the events
//
// The CONFORMANCE_ variables are for the handler; they have no KBRIDGE_
// prefix so that they reach a handler that "kbridge worker --exec" runs.
//
// The worker's handler behaves as the record's value says (see Action):
// "ok", "fail", "sleep:<ms>" (then succeed), "sleepfail:<ms>" (then fail),
// "wait:<name>" (then succeed) and "waitfail:<name>" (then fail), which first
// wait until the file WaitFile(CONFORMANCE_LOG, name, deliveries) exists (the
// kit creates it once it has compared delivery counts, or taken the entry
// from the worker), or one such action per delivery separated by "|" (the
// last one repeats: "fail|ok" fails the first delivery and succeeds after).
// Any other value succeeds at once. Before acting it appends a "start" event to
// CONFORMANCE_LOG, and after it an "end" event with "result" "ok" or "fail",
// each one JSON object on a line of its own (see Event; its numbers may be
// JSON numbers or decimal strings), written with one append so that the
// lines of concurrent handlers do not mix. The end event
// is written before the handler returns, so before the worker acknowledges.
//
// After every scenario, its workers stopped, the kit checks that nothing was
// lost (W20): each entry the group read ended handled, is in the dead-letter
// stream or is still pending.
//
// "kbridge conformance-handler" is such a handler for workers that run a
// command per record the way "kbridge worker --exec" does (the value on
// stdin, the record in KBRIDGE_* variables).
package conformance
