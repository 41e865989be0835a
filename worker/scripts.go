package worker

import (
	"embed"

	"github.com/redis/go-redis/v9"
)

// The Lua scripts of the wire contract live in lua/*.lua, embedded here and
// published verbatim in docs/wire.md (TestScriptsPublished), so that a worker
// in another language runs the very same scripts.
//
// Each touches one partition's keys only (the stream, its replay and
// dead-letter streams share the hash tag), so they run on Redis Cluster too.
// Each checks ownership with XPENDING first: Redis runs a script atomically,
// so no other worker can claim or acknowledge the entry between the check and
// the change.
//
// Delivery counts are set explicitly with RETRYCOUNT: XCLAIM JUSTID does not
// increment the count on redis-server but does on miniredis, and RETRYCOUNT
// means the same on both.

//go:embed lua/*.lua
var luaFiles embed.FS

// ScriptNames lists the files of the embedded Lua scripts (lua/<name>), in
// the order docs/wire.md publishes them.
var ScriptNames = []string{
	"lease.lua", "start.lua", "redeliver.lua", "reclaim.lua", "deadletter.lua",
	"unclaim.lua", "delconsumer.lua", "replay.lua", "runsgc.lua",
}

// ScriptSource returns the text of an embedded Lua script by file name (see
// ScriptNames), or "" if there is none.
func ScriptSource(name string) string {
	b, err := luaFiles.ReadFile("lua/" + name)
	if err != nil {
		return ""
	}
	return string(b)
}

func mustScript(name string) string {
	s := ScriptSource(name)
	if s == "" {
		panic("worker: no embedded script lua/" + name) // a build defect, caught by every test
	}
	return s
}

// leaseSource is the text of leaseScript (a test recognises it in pipelines).
var leaseSource = mustScript("lease.lua")

// leaseScript resets the idle time of the entries that the consumer still
// owns and returns the IDs it no longer owns (lua/lease.lua).
var leaseScript = redis.NewScript(leaseSource)

// lua/redeliver.lua (count a retry's delivery) is published for workers in
// other languages; this worker counts a retry with startScript, which
// records the run too.

// startScript records a handler start (a run) of an entry the consumer
// owns, in the stream's runs hash, and counts the delivery of a retry (an
// entry's first delivery starts without it: its run is implied); it
// refuses the start of an entry that already ran MaxDeliveries times, and
// says when the consumer no longer owns the entry (lua/start.lua).
var startScript = redis.NewScript(mustScript("start.lua"))

// deadLetterScript appends a dead letter and acknowledges the entry, both or
// neither, only if the entry is pending under this consumer
// (lua/deadletter.lua).
var deadLetterScript = redis.NewScript(mustScript("deadletter.lua"))

// reclaimScript is XAUTOCLAIM that also returns the delivery count of each
// entry it claimed, skipping the entries this consumer still holds
// (lua/reclaim.lua). Running those a second time, in parallel, would be a
// duplicate that no lease check can see (the owner did not change).
var reclaimScript = redis.NewScript(mustScript("reclaim.lua"))

// unclaimScript hands back entries the consumer holds but did not start
// (shutdown), so that the next XAUTOCLAIM of any worker takes them
// (lua/unclaim.lua).
var unclaimScript = redis.NewScript(mustScript("unclaim.lua"))

// delConsumerScript deletes a consumer only if it has nothing pending
// (lua/delconsumer.lua). Returns -1 when the consumer still has pending
// entries.
var delConsumerScript = redis.NewScript(mustScript("delconsumer.lua"))

// replayScript moves one dead letter to the replay stream: XADD there, XDEL
// from the dead-letter stream, both or neither (lua/replay.lua). Returns 0 if
// the dead letter is gone.
var replayScript = redis.NewScript(mustScript("replay.lua"))

// runsGCScript deletes the runs recorded (start.lua) for entries no longer
// pending in the group, one HSCAN batch of the runs hash at a time
// (lua/runsgc.lua): the fields that the acknowledgement and the dead letter
// of this worker do not delete (another consumer's or another kind of
// worker's ack, a stopped retry, a deleted entry).
var runsGCScript = redis.NewScript(mustScript("runsgc.lua"))
