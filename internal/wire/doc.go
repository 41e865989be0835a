// Package wire holds the Redis layout that the ingest, the workers and the
// operator tools share: key names, entry IDs and the entry codec. It is the
// code form of docs/wire.md; a change here is a change of the wire contract.
//
// Layout, for prefix "kbridge", topic "orders", partition 3:
//
//	kbridge:{orders:3}          stream of the partition's records, entry ID "<offset>-1"
//	kbridge:{orders:3}:dlq      dead letters of the partition (with the reason)
//	kbridge:{orders:3}:replay   dead letters handed back to the workers by "kbridge dlq replay"
//	kbridge:{orders:3}:status   hash the ingest refreshes (committed, top, backlog, ...), with a TTL
//	kbridge:streams             set of every partition stream, for worker discovery
//
// The hash tag {topic:partition} keeps a stream and its companion keys in one
// Redis Cluster slot, so a Lua script or MULTI may touch them together.
package wire
