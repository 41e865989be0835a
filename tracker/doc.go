// Package tracker decides, from what Redis says about a partition stream, the
// Kafka offset that is safe to commit. It is pure logic: no I/O, no clocks.
//
// The ingest appends Kafka record <o> as stream entry "<o>-1"; workers read
// the stream with XREADGROUP in one or more consumer groups and XACK what they
// finished. The lowest offset some group has not yet acknowledged — its
// frontier — is the offset to commit to Kafka: everything below it is done by
// every group. A Partition keeps that commit monotonic, never past what was
// appended, and notices when Redis lost writes (the stream vanished or its top
// went back), so the ingest can fetch the lost records again: losing Redis
// data costs duplicates, never records.
//
// Per group the frontier is min(lowest pending ID, first entry after the
// group's last-delivered-id, top + 1). The pending and last-delivered reads
// must come from one atomic snapshot (the ingest reads them in one Lua
// script): read separately, an entry delivered and acked between the two
// reads could be skipped.
package tracker
