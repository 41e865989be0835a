package bridge

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/wire"
)

// AppendGuarded appends recs (consecutive records of one partition, offsets
// rising) to the stream key exactly the way the ingest does when the ACL
// allows MULTI (appendMultiBatches: guarded MULTI/EXEC transactions of
// batchSize records), with no Kafka and no ingest around it. expected is the
// stream's top (-1: empty). It exists for benchmarks: kbench's 10a measures
// with it the ceiling of the append that invariant 1 requires beside the
// ceiling of a plain XADD. The stream must exist (XGROUP CREATE ...
// MKSTREAM); a stream missing, behind or ahead is an error.
func AppendGuarded(ctx context.Context, rdb redis.UniversalClient, key string, batchSize int, expected int64, recs []wire.Record) (int, error) {
	if batchSize < 1 {
		return 0, fmt.Errorf("append to %s: batch size %d must be at least 1", key, batchSize)
	}
	multi := new(atomic.Bool)
	multi.Store(true)
	s := &stream{rdb: rdb, key: key, batchSize: batchSize, multi: multi}
	res, err := s.appendMultiBatches(ctx, expected, -1, recs)
	switch {
	case err != nil:
		return res.added, err
	case res.lost:
		return res.added, fmt.Errorf("append to %s: the stream is missing or its top %d is behind %d", key, res.top, expected)
	case res.foreign:
		return res.added, fmt.Errorf("append to %s: its top %d is ahead of %d and not a record", key, res.top, expected)
	}
	return res.added, nil
}
