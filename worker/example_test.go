package worker_test

import (
	"context"
	"fmt"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/worker"
)

// A worker that handles the records of every partition stream the ingest
// registered under the prefix. Here the test plays the ingest.
func Example() {
	srv := miniredis.NewMiniRedis()
	if err := srv.Start(); err != nil {
		panic(err)
	}
	defer srv.Close()
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rdb.Close()
	ctx := context.Background()

	// What the ingest does: group at 0, register the stream, append.
	rdb.XGroupCreateMkStream(ctx, "kbridge:{orders:0}", "workers", "0")
	rdb.SAdd(ctx, "kbridge:streams", "kbridge:{orders:0}")
	rdb.XAdd(ctx, &redis.XAddArgs{Stream: "kbridge:{orders:0}", ID: "7-1",
		Values: []any{"topic", "orders", "partition", "0", "offset", "7", "timestamp", "0", "key", "o-1", "value", `{"amount":12}`}})

	done := make(chan struct{})
	w, err := worker.New(worker.Config{
		Redis: rdb,
		Handler: func(ctx context.Context, m *worker.Message) error {
			fmt.Printf("%s/%d@%d key=%s value=%s delivery=%d\n", m.Topic, m.Partition, m.Offset, m.Key, m.Value, m.Deliveries)
			close(done)
			return nil // acknowledged
		},
		BlockTimeout: 50 * time.Millisecond,
	})
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(ctx)
	stopped := make(chan error)
	go func() { stopped <- w.Run(ctx) }()
	<-done
	cancel() // graceful: finishes in-flight work and sends the last acks
	fmt.Println("Run:", <-stopped)
	fmt.Println("pending:", rdb.XPending(context.Background(), "kbridge:{orders:0}", "workers").Val().Count)
	// Output:
	// orders/0@7 key=o-1 value={"amount":12} delivery=1
	// Run: <nil>
	// pending: 0
}
