package bridge

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kbridge/kbridge/internal/testenv"
)

// TestRedisCPUPerRecord measures what redis-server itself spends per record
// (INFO cpu, user + sys, over the run) on the commands of the MULTI/EXEC
// append path, beside the plain XADDs 10a's raw side sends. The commands go
// pre-encoded over 8 connections at once (a stream each, with a consumer
// group, as in 10a), so the client's own CPU hardly competes with Redis on
// a small machine. Modes, interleaved round by round:
//
//	xadd     XADD <stream> <offset>-1 fields..., 1,000 per round trip
//	multi    the same XADDs (NOMKSTREAM) in MULTI/EXEC transactions of 500,
//	         two per round trip (a 1 MiB fetch of 1 KB records)
//	guarded  what appendMulti sends: MULTI, the guard script (open), the
//	         XADDs to the append key, the guard script (close), EXEC
//
// It measures, it checks nothing but the streams' lengths: run it by hand on
// a quiet real Redis, e.g.
//
//	KBRIDGE_MEASURE=1 REDIS_ADDR=127.0.0.1:36400 go test -run RedisCPUPerRecord -v ./bridge/
func TestRedisCPUPerRecord(t *testing.T) {
	if os.Getenv("KBRIDGE_MEASURE") == "" || !testenv.RealRedis() {
		t.Skip("a measurement, not a test: set KBRIDGE_MEASURE=1 and REDIS_ADDR (a real redis-server)")
	}
	r := testenv.NewRedis(t)
	rdb := r.Client(t)
	ctx := context.Background()
	if err := guardScript.Load(ctx, rdb).Err(); err != nil {
		t.Fatal(err)
	}
	const parts, perPart, batch, perTrip, rounds = 8, 20000, 500, 1000, 5
	prefix := "kbcpu-" + testenv.Name(t)
	for _, size := range []int{100, 1024} {
		value := []byte(strings.Repeat("x", size))
		cost := map[string][]float64{}
		modes := []string{"xadd", "multi", "guarded"}
		for round := range rounds {
			for _, mode := range modes {
				trips := make([][][]byte, parts) // per connection, per round trip
				replies := make([][]int, parts)
				keys := make([]string, parts)
				for p := range parts {
					key := fmt.Sprintf("%s-%d-%s:{t:%d}", prefix, round, mode, p)
					keys[p] = key
					if err := rdb.XGroupCreateMkStream(ctx, key, "workers", "0").Err(); err != nil {
						t.Fatal(err)
					}
					var fence string
					for from := 0; from < perPart; from += perTrip {
						var b []byte
						n := 0
						for o := from; o < from+perTrip; o++ {
							first, last := (o-from)%batch == 0, (o-from)%batch == batch-1
							if mode != "xadd" && first {
								b, n = respArgs(b, "MULTI"), n+1
								if mode == "guarded" {
									fence = fmt.Sprintf("%s:append:%d", key, o)
									b, n = respArgs(b, "EVALSHA", guardScript.Hash(), "2", key, fence, "open", strconv.Itoa(o-1), "-1"), n+1
								}
							}
							args := []string{"XADD", key}
							if mode == "guarded" {
								args[1] = fence // the guard renamed the stream to it
							}
							if mode != "xadd" {
								args = append(args, "NOMKSTREAM")
							}
							args = append(args, strconv.Itoa(o)+"-1", "topic", "t", "partition", strconv.Itoa(p), "offset", strconv.Itoa(o),
								"timestamp", strconv.Itoa(1700000000000+o), "key", "k"+strconv.Itoa(o), "value", string(value))
							b, n = respArgs(b, args...), n+1
							if mode != "xadd" && last {
								if mode == "guarded" {
									b, n = respArgs(b, "EVALSHA", guardScript.Hash(), "2", key, fence, "close"), n+1
								}
								b, n = respArgs(b, "EXEC"), n+1
							}
						}
						trips[p] = append(trips[p], b)
						replies[p] = append(replies[p], n)
					}
				}
				cpu0 := redisCPU(t, rdb)
				start := time.Now()
				var wg sync.WaitGroup
				for p := range parts {
					wg.Add(1)
					go func() {
						defer wg.Done()
						if err := sendTrips(r.Addr, trips[p], replies[p]); err != nil {
							t.Error(err)
						}
					}()
				}
				wg.Wait()
				took := time.Since(start)
				used := redisCPU(t, rdb) - cpu0
				for _, key := range keys {
					if n := rdb.XLen(ctx, key).Val(); n != perPart {
						t.Errorf("%s: %d entries, want %d", key, n, perPart)
					}
					rdb.Del(ctx, key)
				}
				records := float64(parts * perPart)
				c := float64(used.Microseconds()) / records
				cost[mode] = append(cost[mode], c)
				t.Logf("%4d B round %d %-8s %7.0f records/s, redis %.2f µs/record (%.0f%% of a core)",
					size, round+1, mode, records/took.Seconds(), c, 100*used.Seconds()/took.Seconds())
			}
		}
		for _, mode := range modes {
			c := slices.Sorted(slices.Values(cost[mode]))
			t.Logf("%4d B %-8s redis µs/record: min %.2f, median %.2f, median ÷ xadd's %.2f", size, mode, c[0], c[len(c)/2],
				c[len(c)/2]/slices.Sorted(slices.Values(cost["xadd"]))[len(c)/2])
		}
	}
}

// sendTrips writes each round trip's commands at once on a connection of
// its own and reads their replies (n[i] of them) before the next.
func sendTrips(addr string, trips [][]byte, n []int) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	rd := bufio.NewReaderSize(c, 1<<16)
	for i, b := range trips {
		if _, err := c.Write(b); err != nil {
			return err
		}
		for range n[i] {
			if err := respSkip(rd); err != nil {
				return err
			}
		}
	}
	return nil
}

// respArgs appends one command, RESP-encoded.
func respArgs(b []byte, args ...string) []byte {
	b = append(b, '*')
	b = strconv.AppendInt(b, int64(len(args)), 10)
	b = append(b, '\r', '\n')
	for _, a := range args {
		b = append(b, '$')
		b = strconv.AppendInt(b, int64(len(a)), 10)
		b = append(b, '\r', '\n')
		b = append(b, a...)
		b = append(b, '\r', '\n')
	}
	return b
}

// respSkip reads one reply and fails on an error reply, inside an array
// too (an XADD refused inside EXEC).
func respSkip(rd *bufio.Reader) error {
	line, err := rd.ReadSlice('\n')
	if err != nil {
		return err
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(line[1:])))
	switch line[0] {
	case '+', ':':
		return nil
	case '-':
		return fmt.Errorf("redis: %s", strings.TrimSpace(string(line)))
	case '$':
		if n >= 0 {
			_, err = rd.Discard(n + 2)
		}
		return err
	case '*':
		for range n {
			if err := respSkip(rd); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("unexpected reply %q", line)
}
