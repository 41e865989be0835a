package bridge

import (
	"context"

	"github.com/segmentio/kafka-go"
)

// SetDLQRefusal makes every produce of in's dead-letter export fail with the
// error refuse returns, while it returns one: Kafka refusing the dead-letter
// topic (missing and not creatable, not authorized). Call it before Run.
func SetDLQRefusal(in *Ingest, refuse func() error) {
	next := in.dlq.write
	in.dlq.write = func(ctx context.Context, msgs ...kafka.Message) error {
		if err := refuse(); err != nil {
			return err
		}
		return next(ctx, msgs...)
	}
}

// DLQScanLimit is how many dead letters not yet exported a partition's
// commit can look past; with more, it waits.
const DLQScanLimit = dlqScanLimit

// InjectCommitFault makes the ingest fail the commit of every partition for
// which fault returns an error, as if the broker refused it (a seam for
// tests of commit failures). Call it before Run.
func InjectCommitFault(in *Ingest, fault func(topic string, partition int) error) {
	in.commitFault = fault
}

// MultiAppendRedisCommands are the commands of the MULTI/EXEC append path:
// wanted, not required (a user without them appends with the script).
var MultiAppendRedisCommands = multiAppendRedisCommands
