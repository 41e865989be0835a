// Package bridge is the ingest of kbridge: it reads Kafka as a member of a
// consumer group and appends every record to a Redis stream, one stream per
// partition, for worker processes to consume with XREADGROUP and XACK.
//
// The ingest commits a Kafka offset only once every record below it has been
// acknowledged by every configured worker group, and it stops fetching a
// partition while its stream is full. It never waits on a worker: fetching,
// appending and committing go on whatever the workers do, so heartbeats keep
// flowing and slow processing cannot cause a rebalance.
//
// Each record <o> becomes the stream entry "<o>-1", appended by a Lua script
// that checks the stream's top first, so a retried or duplicated append (a
// restarted ingest, a zombie after a rebalance) is rejected instead of
// leaving a hole; and a stream whose top went back (Redis lost writes) is
// detected, its groups recreated and the lost records fetched again. See
// ../docs/wire.md for the layout and ../shared/design.md for the invariants.
package bridge
