package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// cmdSink is an HTTP endpoint for "kbridge worker --http": it answers 204
// after --sleep, counts every record by topic/partition, and counts
// deliveries of a record it already saw (duplicates). GET /stats returns
// the counts as JSON.
func cmdSink(args []string) error {
	fs := flag.NewFlagSet("sink", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	portFile := fs.String("port-file", "", "write the chosen port here")
	sleep := fs.Duration("sleep", 0, "time each request takes")
	_ = fs.Parse(args)
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	if *portFile != "" {
		port := ln.Addr().(*net.TCPAddr).Port
		if err := os.WriteFile(*portFile, []byte(strconv.Itoa(port)), 0o644); err != nil {
			return err
		}
	}
	c := newCounter()
	mux := http.NewServeMux()
	mux.HandleFunc("/stats", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(c.snapshot())
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if *sleep > 0 {
			time.Sleep(*sleep)
		}
		p, _ := strconv.Atoi(r.Header.Get("Kbridge-Partition"))
		off, _ := strconv.ParseInt(r.Header.Get("Kbridge-Offset"), 10, 64)
		c.add(r.Header.Get("Kbridge-Topic"), p, off)
		w.WriteHeader(http.StatusNoContent)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() { <-ctx.Done(); _ = srv.Close() }()
	if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
		return err
	}
	return nil
}

// counter counts handled records per topic/partition and the records seen
// more than once.
type counter struct {
	mu    sync.Mutex
	seen  map[string][]uint64 // bitset of offsets per "topic/partition"
	per   map[string]int64
	total int64
	dups  int64
}

func newCounter() *counter { return &counter{seen: map[string][]uint64{}, per: map[string]int64{}} }

func (c *counter) add(topic string, partition int, offset int64) {
	key := topic + "/" + strconv.Itoa(partition)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.total++
	c.per[key]++
	bits := c.seen[key]
	w := int(offset / 64)
	if w >= len(bits) {
		bits = append(bits, make([]uint64, w+1-len(bits)+len(bits)/2)...)
		c.seen[key] = bits
	}
	if bits[w]&(1<<(offset%64)) != 0 {
		c.dups++
		return
	}
	bits[w] |= 1 << (offset % 64)
}

// counts is what /stats returns.
type counts struct {
	Total int64            `json:"total"`
	Dups  int64            `json:"dups"`
	Per   map[string]int64 `json:"per"`
	// Worker is the worker library's Stats (kbench worker only).
	Worker map[string]int64 `json:"worker,omitempty"`
}

func (c *counter) snapshot() counts {
	c.mu.Lock()
	defer c.mu.Unlock()
	per := make(map[string]int64, len(c.per))
	for k, v := range c.per {
		per[k] = v
	}
	return counts{Total: c.total, Dups: c.dups, Per: per}
}

// fetchCounts GETs /stats of a sink or a kbench worker.
func fetchCounts(ctx context.Context, addr string) (counts, error) {
	var out counts
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/stats", nil)
	if err != nil {
		return out, err
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return out, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return out, fmt.Errorf("GET %s/stats: %s", addr, res.Status)
	}
	return out, json.NewDecoder(res.Body).Decode(&out)
}
