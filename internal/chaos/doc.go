// Package chaos is the fault harness of kbridge: it runs the whole system —
// a Kafka broker and a redis-server of its own, several `kbridge ingest` and
// `kbridge worker` processes, a producer and a recording handler — and
// injects faults from a seeded schedule: SIGKILL, SIGSTOP and SIGTERM of
// ingests and workers, Redis restarts with and without persistence, Kafka
// broker restarts, and connections cut, refused or frozen by a loopback
// Proxy that stands between kbridge and both servers.
//
// The ledger knows every record the producer wrote and every delivery the
// workers made; the checker says what was lost (must be 0), which records
// were delivered more than once and why (worker crash, Redis loss, ...),
// whether a commit ever went backwards or passed an offset no worker had
// handled, and whether the final commit reached the log end. The recovery
// time of each fault is the time until every partition's commit moved past
// the log end at the fault.
//
// scripts/chaos.sh is the entry point (cmd/chaos); the tests of this package
// run a quick seed, the recovery time of each fault type, and rolling
// restarts of three ingests on a 1,000-partition topic, on real services.
package chaos
