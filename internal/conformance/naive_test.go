package conformance_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/conformance"
)

// TestMain runs the naive worker when the kit starts this test binary as
// "naive-worker".
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "naive-worker" {
		if err := naiveWorker(); err != nil {
			fmt.Fprintln(os.Stderr, "naive worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// naiveWorker is what a first attempt at a worker often is: read new entries
// of the registered streams with ">", run the handler, XACK what succeeded.
// It reads no replay stream, takes the offset from the entry ID, passes the
// fields through undecoded, and leaves signals to the Go runtime.
func naiveWorker() error {
	opt, err := redis.ParseURL(os.Getenv("KBRIDGE_REDIS_URL"))
	if err != nil {
		return err
	}
	rdb := redis.NewClient(opt)
	ctx := context.Background()
	prefix, group, consumer := os.Getenv("KBRIDGE_PREFIX"), os.Getenv("KBRIDGE_GROUP"), os.Getenv("KBRIDGE_CONSUMER")
	for {
		streams, err := rdb.SMembers(ctx, prefix+":streams").Result()
		if err != nil {
			return err
		}
		var args []string
		for _, s := range streams {
			groups, _ := rdb.XInfoGroups(ctx, s).Result()
			for _, g := range groups {
				if g.Name == group {
					args = append(args, s)
				}
			}
		}
		if len(args) == 0 {
			continue
		}
		for range args {
			args = append(args, ">")
		}
		res, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: group, Consumer: consumer, Streams: args, Count: 10, Block: 100 * time.Millisecond}).Result()
		if errors.Is(err, redis.Nil) || (err != nil && strings.HasPrefix(err.Error(), "NOGROUP")) {
			continue
		}
		if err != nil {
			return err
		}
		for _, st := range res {
			for _, m := range st.Messages {
				if naiveHandle(st.Stream, m) {
					rdb.XAck(ctx, st.Stream, group, m.ID)
				}
			}
		}
	}
}

func naiveHandle(stream string, m redis.XMessage) bool {
	str := func(k string) *string {
		v, ok := m.Values[k].(string)
		if !ok {
			return nil
		}
		b := base64.StdEncoding.EncodeToString([]byte(v))
		return &b
	}
	var off int64
	fmt.Sscanf(m.ID, "%d", &off)
	e := conformance.Event{Event: "start", Worker: os.Getenv("CONFORMANCE_WORKER"), Stream: stream, ID: m.ID, Deliveries: 1,
		Offset: conformance.Int(off), Key: str("key"), Value: str("value")}
	e.Topic, _ = m.Values["topic"].(string)
	fmt.Sscanf(fmt.Sprint(m.Values["partition"]), "%d", &e.Partition)
	fmt.Sscanf(fmt.Sprint(m.Values["timestamp"]), "%d", &e.Timestamp)
	if h, ok := m.Values["headers"].(string); ok {
		_ = json.Unmarshal([]byte(h), &e.Headers)
	}
	value, _ := m.Values["value"].(string)
	log := os.Getenv("CONFORMANCE_LOG")
	_ = conformance.AppendEvent(log, e)
	step := conformance.Action([]byte(value), 1)
	step.Do(log, 1)
	e.Event, e.Result = "end", "ok"
	if step.Fail {
		e.Result = "fail"
	}
	_ = conformance.AppendEvent(log, e)
	return !step.Fail
}
