// Command goworker is a complete custom kbridge worker in Go: it reads the
// records the ingest put in Redis and "charges" each order, idempotently.
//
//	go run ./examples/goworker -redis 127.0.0.1:6379 -prefix kbridge -concurrency 32
//
// Start as many as you like, on any machine that reaches Redis. SIGTERM lets
// running handlers finish, acknowledges and exits 0; a second signal exits at
// once (what it held is reclaimed by the others after the visibility timeout).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/worker"
)

func main() {
	addr := flag.String("redis", "127.0.0.1:6379", "Redis address")
	prefix := flag.String("prefix", "kbridge", "key prefix (the ingest's --prefix)")
	group := flag.String("group", worker.DefaultGroup, "worker group (one of the ingest's --worker-groups)")
	concurrency := flag.Int("concurrency", 32, "records handled at the same time")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	rdb := redis.NewClient(&redis.Options{Addr: *addr})
	defer rdb.Close()

	orders := &orderService{charged: map[string]bool{}}
	w, err := worker.New(worker.Config{
		Redis:             rdb,
		Prefix:            *prefix,
		Group:             *group,
		Concurrency:       *concurrency,
		VisibilityTimeout: 30 * time.Second, // leases of running handlers are extended
		MaxDeliveries:     5,                // then the record goes to the dead-letter stream
		Handler:           orders.handle,
		Logger:            log,
		OnHandled: func(m *worker.Message, took time.Duration, err error) {
			// wire your metrics here (a latency histogram, error counters)
		},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	go func() { // a second signal exits at once
		<-ctx.Done()
		stop()
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
		<-ch
		os.Exit(130)
	}()
	if err := w.Run(ctx); err != nil {
		log.Error("worker stopped", "err", err)
		os.Exit(1)
	}
	log.Info("bye", "stats", fmt.Sprintf("%+v", w.Stats()))
}

// orderService stands for your side effect. It must be idempotent: a record
// is delivered at least once.
type orderService struct {
	mu      sync.Mutex
	charged map[string]bool
}

func (s *orderService) handle(ctx context.Context, m *worker.Message) error {
	if m.Value == nil {
		return nil // a tombstone: nothing to charge
	}
	if len(m.Value) == 0 {
		// No retry can fix an empty order: dead-letter it now.
		return worker.Permanent(errors.New("empty order"))
	}
	id := fmt.Sprintf("%s/%d/%d", m.Topic, m.Partition, m.Offset) // idempotency key
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.charged[id] {
		return nil // a redelivery after a crash: already done
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(time.Millisecond): // the payment call
	}
	s.charged[id] = true
	return nil
}
