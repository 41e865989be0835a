package main

import (
	"context"
	"flag"
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof" // --pprof-addr
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/bridge"
)

// cmdIngest runs bridge.Ingest as a library (what "kbridge ingest" runs,
// with the defaults of bridge.Config) under a CPU profile: the profile
// behind a missed ingest target.
func cmdIngest(args []string) error {
	fs := flag.NewFlagSet("ingest", flag.ExitOnError)
	brokers := fs.String("brokers", "127.0.0.1:9092", "Kafka brokers")
	addr := fs.String("redis", "127.0.0.1:6379", "Redis address")
	prefix := fs.String("prefix", "kbridge", "key prefix")
	group := fs.String("group", "kbridge", "Kafka group")
	topics := fs.String("topics", "", "topics")
	pcap := fs.Int64("partition-cap", 0, "partition cap (0: default)")
	cpuprofile := fs.String("cpuprofile", "", "CPU profile of the whole run")
	memprofile := fs.String("memprofile", "", "heap profile at the end")
	onSignal := fs.Bool("profile-on-sigusr1", false, "start the CPU profile at SIGUSR1 instead of at once")
	pprofAddr := fs.String("pprof-addr", "", "serve net/http/pprof on this address (heap and allocation profiles while it runs)")
	_ = fs.Parse(args)
	if *pprofAddr != "" {
		ln, err := net.Listen("tcp", *pprofAddr)
		if err != nil {
			return err
		}
		defer ln.Close()
		go func() { _ = http.Serve(ln, nil) }() // net/http/pprof registers on the default mux
	}
	if *cpuprofile != "" && *onSignal {
		usr1 := make(chan os.Signal, 1)
		signal.Notify(usr1, syscall.SIGUSR1)
		var mu sync.Mutex
		var f *os.File
		go func() {
			<-usr1
			mu.Lock()
			defer mu.Unlock()
			var err error
			if f, err = os.Create(*cpuprofile); err == nil {
				_ = pprof.StartCPUProfile(f)
			}
		}()
		defer func() {
			mu.Lock()
			defer mu.Unlock()
			if f != nil {
				pprof.StopCPUProfile()
				f.Close()
			}
		}()
	} else if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	rdb := redis.NewClient(&redis.Options{Addr: *addr, ContextTimeoutEnabled: true})
	defer rdb.Close()
	in, err := bridge.New(bridge.Config{
		Brokers: strings.Split(*brokers, ","), Topics: strings.Split(*topics, ","), Group: *group,
		Redis: rdb, Prefix: *prefix, PartitionCap: *pcap,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	err = in.Run(ctx)
	if *memprofile != "" {
		if f, ferr := os.Create(*memprofile); ferr == nil {
			runtime.GC()
			_ = pprof.WriteHeapProfile(f)
			f.Close()
		}
	}
	return err
}
