package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"

	"github.com/kbridge/kbridge/internal/wire"
)

// SystemConfig describes the system under test.
type SystemConfig struct {
	Bin     string // the kbridge binary
	Scripts string // the repository's scripts/ directory
	Dir     string // run directory: data, process logs, ledger

	Partitions int
	Ingests    int
	Workers    int
	Rate       int           // records per second
	Size       int           // value bytes
	Delay      time.Duration // handler time per record
	Poison     int64         // every Poison-th record fails on every delivery (dead-lettered); 0: none

	// Extra flags of every ingest and worker (after the command name).
	IngestArgs, WorkerArgs []string

	// Ports; 0 picks a free one. Kafka uses KafkaPort, +1 (controller) and
	// +2 (the listener behind the proxy).
	KafkaPort, KafkaProxyPort, RedisPort, RedisProxyPort, HandlerPort int

	Log *slog.Logger // the harness's own log; nil discards
	Out io.Writer    // output of the service scripts; nil discards

	// Brokers and RedisAddr, when set, are servers the harness does not own
	// (the shared test services): it starts no Kafka, Redis nor proxy, and
	// faults on them are refused. Name then keeps the run's topic, group
	// and prefix apart (default "chaos"); Close deletes the topic and keys.
	Brokers   []string
	RedisAddr string
	Name      string
}

// System is everything a chaos run starts: Kafka and Redis with a proxy in
// front of each, the ingests and workers, the handler, producer and monitor.
type System struct {
	cfg                   SystemConfig
	log                   *slog.Logger
	Topic, Group, Prefix  string
	Kafka                 *Kafka
	Redis                 *Redis
	KafkaProxy            *Proxy
	RedisProxy            *Proxy
	Ingests, Workers      []*Proc
	Ledger                *Ledger
	Producer              *Producer
	Monitor               *Monitor
	HandlerAddr           string
	client                *kafka.Client
	rdb                   *redis.Client
	brokers               []string // what the harness itself talks to
	shared                bool     // on servers the harness does not own
	bg                    context.CancelFunc
	loadCancel            context.CancelFunc
	bgWG, loadWG, faultWG sync.WaitGroup

	mu        sync.Mutex
	busy      map[string]bool
	ingestDir string
}

// StartSystem starts Kafka, Redis, their proxies, the handler, the workers
// and the ingests, and creates the topic. Close stops everything.
func StartSystem(ctx context.Context, cfg SystemConfig) (s *System, err error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Size <= 0 {
		cfg.Size = 100
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	name := cfg.Name
	if name == "" {
		name = "chaos"
	}
	s = &System{cfg: cfg, log: cfg.Log, Topic: name, Group: name + "-ingest", Prefix: name, busy: map[string]bool{}}
	bgCtx, cancel := context.WithCancel(context.Background())
	s.bg = cancel
	started := s
	defer func() {
		if err != nil {
			started.Close() // s is nil by now
		}
	}()
	kafkaForKbridge, redisForKbridge := "", ""
	if len(cfg.Brokers) > 0 || cfg.RedisAddr != "" {
		if len(cfg.Brokers) == 0 || cfg.RedisAddr == "" {
			return nil, errors.New("chaos: Brokers and RedisAddr go together")
		}
		s.shared = true
		s.brokers = cfg.Brokers
		kafkaForKbridge, redisForKbridge = strings.Join(cfg.Brokers, ","), cfg.RedisAddr
		if cfg.HandlerPort == 0 {
			if cfg.HandlerPort, err = freePortRun(1); err != nil {
				return nil, err
			}
		}
		s.cfg = cfg
		s.rdb = redis.NewClient(&redis.Options{Addr: cfg.RedisAddr, MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: 5 * time.Second})
	} else {
		if err := s.startServices(ctx, &cfg); err != nil {
			return nil, err
		}
		s.cfg = cfg
		s.brokers = []string{s.Kafka.Addr()}
		kafkaForKbridge, redisForKbridge = s.KafkaProxy.Addr(), s.RedisProxy.Addr()
		s.rdb = redis.NewClient(&redis.Options{Addr: s.Redis.Addr(), MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: 5 * time.Second})
	}
	s.client = &kafka.Client{Addr: kafka.TCP(s.brokers...), Timeout: 10 * time.Second}
	if err := createTopic(ctx, s.client, s.Topic, cfg.Partitions); err != nil {
		return nil, err
	}
	s.Ledger = NewLedger(s.Topic)
	s.Ledger.Delay = cfg.Delay
	s.Ledger.PoisonEvery = cfg.Poison
	if s.HandlerAddr, err = s.Ledger.Serve(bgCtx, "127.0.0.1:"+strconv.Itoa(cfg.HandlerPort)); err != nil {
		return nil, fmt.Errorf("handler: %w", err)
	}
	s.Monitor = &Monitor{Client: s.client, Group: s.Group, Topic: s.Topic, Partitions: cfg.Partitions, Ledger: s.Ledger}
	s.bgWG.Add(2)
	go func() { defer s.bgWG.Done(); s.Monitor.Run(bgCtx, 250*time.Millisecond) }()
	go func() {
		defer s.bgWG.Done()
		s.Ledger.WatchDeadLetters(bgCtx, s.rdb, s.Prefix, cfg.Partitions, time.Second)
	}()

	common := []string{"--redis-url", "redis://" + redisForKbridge + "/0", "--prefix", s.Prefix,
		"--log-format", "json", "--log-level", "info"}
	for i := range cfg.Workers {
		name := "worker-" + strconv.Itoa(i+1)
		args := append(append(clone(common), "worker", "--http", "http://"+s.HandlerAddr+"/h/"+name), cfg.WorkerArgs...)
		s.Workers = append(s.Workers, &Proc{Name: name, Kind: "worker", Bin: cfg.Bin, Args: args,
			LogPath: filepath.Join(cfg.Dir, name+".log")})
	}
	for i := range cfg.Ingests {
		name := "ingest-" + strconv.Itoa(i+1)
		args := append(append(clone(common), "ingest", "--brokers", kafkaForKbridge, "--topics", s.Topic,
			"--group", s.Group), cfg.IngestArgs...)
		s.Ingests = append(s.Ingests, &Proc{Name: name, Kind: "ingest", Bin: cfg.Bin, Args: args,
			LogPath: filepath.Join(cfg.Dir, name+".log")})
	}
	for _, p := range append(clone(s.Workers), s.Ingests...) {
		if err := p.Start(); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// startServices starts the harness's own Kafka and Redis, behind proxies.
func (s *System) startServices(ctx context.Context, cfg *SystemConfig) error {
	var err error
	if cfg.KafkaPort == 0 {
		if cfg.KafkaPort, err = freePortRun(3); err != nil {
			return err
		}
	}
	for _, p := range []*int{&cfg.KafkaProxyPort, &cfg.RedisPort, &cfg.RedisProxyPort, &cfg.HandlerPort} {
		if *p == 0 {
			if *p, err = freePortRun(1); err != nil {
				return err
			}
		}
	}
	// Ports in the kernel's ephemeral range can be held for a minute by a
	// connection of another program in TIME_WAIT: wait that long.
	for _, p := range []int{cfg.KafkaPort, cfg.KafkaPort + 1, cfg.KafkaPort + 2, cfg.KafkaProxyPort, cfg.RedisPort, cfg.RedisProxyPort, cfg.HandlerPort} {
		deadline := time.Now().Add(75 * time.Second)
		for !canListen(p) {
			if time.Now().After(deadline) || ctx.Err() != nil {
				return fmt.Errorf("port %d on 127.0.0.1 is in use (ports of this run: Kafka %d-%d, its proxy %d, Redis %d, its proxy %d, handler %d)",
					p, cfg.KafkaPort, cfg.KafkaPort+2, cfg.KafkaProxyPort, cfg.RedisPort, cfg.RedisProxyPort, cfg.HandlerPort)
			}
			s.log.Warn("port in use; waiting for it (a connection in TIME_WAIT holds it for up to a minute)", "port", p)
			sleepCtx(ctx, 2*time.Second)
		}
	}
	s.Kafka = &Kafka{Scripts: cfg.Scripts, Port: cfg.KafkaPort, ProxyAddr: "127.0.0.1:" + strconv.Itoa(cfg.KafkaProxyPort),
		Dir: filepath.Join(cfg.Dir, "kafka"), Out: cfg.Out}
	s.Redis = &Redis{Scripts: cfg.Scripts, Port: cfg.RedisPort, Dir: filepath.Join(cfg.Dir, "redis"), Out: cfg.Out}
	// The proxies first: the broker advertises its proxy, and its own
	// readiness probe goes through it.
	if s.KafkaProxy, err = NewProxy(s.Kafka.ProxyAddr, s.Kafka.ProxiedAddr()); err != nil {
		return fmt.Errorf("kafka proxy: %w", err)
	}
	if s.RedisProxy, err = NewProxy("127.0.0.1:"+strconv.Itoa(cfg.RedisProxyPort), s.Redis.Addr()); err != nil {
		return fmt.Errorf("redis proxy: %w", err)
	}
	began := time.Now()
	s.log.Info("starting redis", "addr", s.Redis.Addr(), "proxy", s.RedisProxy.Addr())
	if err := s.Redis.Start(ctx); err != nil {
		return err
	}
	s.log.Info("starting kafka (a JVM: this takes a while)", "addr", s.Kafka.Addr(), "proxy", s.KafkaProxy.Addr())
	if err := s.Kafka.Start(ctx, true); err != nil {
		return err
	}
	s.log.Info("services up", "took", time.Since(began).Round(time.Millisecond))
	return nil
}

func clone[T any](s []T) []T { return append([]T(nil), s...) }

// StartLoad starts the producer.
func (s *System) StartLoad(rate int) {
	ctx, cancel := context.WithCancel(context.Background())
	s.loadCancel = cancel
	s.Producer = &Producer{Brokers: s.brokers, Topic: s.Topic, Partitions: s.cfg.Partitions,
		Rate: rate, Size: s.cfg.Size, Ledger: s.Ledger, Log: s.log}
	s.loadWG.Add(1)
	go func() { defer s.loadWG.Done(); s.Producer.Run(ctx) }()
}

// StopLoad stops the producer and waits for its last write.
func (s *System) StopLoad() {
	if s.loadCancel != nil {
		s.loadCancel()
		s.loadWG.Wait()
	}
}

// WaitFlowing waits until every partition has a commit above 0: the whole
// pipeline runs.
func (s *System) WaitFlowing(ctx context.Context, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		for _, p := range append(clone(s.Ingests), s.Workers...) {
			if u := p.Unexpected(); len(u) > 0 {
				return fmt.Errorf("before the pipeline flowed, %s", u[0])
			}
		}
		if last, ok := s.Monitor.Last(); ok {
			all := true
			for _, c := range last.Committed {
				if c <= 0 {
					all = false
				}
			}
			if all {
				return nil
			}
		}
		if time.Now().After(deadline) {
			last, _ := s.Monitor.Last()
			return fmt.Errorf("the pipeline is not flowing after %v: commits %v, log ends %v", within, last.Committed, last.LogEnd)
		}
		sleepCtx(ctx, 200*time.Millisecond)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// Close stops every process, the services and the proxies.
func (s *System) Close() {
	s.StopLoad()
	for _, p := range append(clone(s.Ingests), s.Workers...) {
		if p.Running() {
			_ = p.Kill()
		}
	}
	if s.bg != nil {
		s.bg()
	}
	s.bgWG.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if s.shared && s.client != nil {
		s.cleanShared(ctx)
	}
	if s.Kafka != nil {
		if err := s.Kafka.Stop(ctx); err != nil {
			s.log.Warn("stopping kafka", "err", err)
		}
	}
	if s.Redis != nil {
		if err := s.Redis.Stop(ctx); err != nil {
			s.log.Warn("stopping redis", "err", err)
		}
	}
	for _, p := range []*Proxy{s.KafkaProxy, s.RedisProxy} {
		if p != nil {
			p.Close()
		}
	}
	if s.rdb != nil {
		s.rdb.Close()
	}
}

// cleanShared deletes the run's topic and keys from servers it shares.
func (s *System) cleanShared(ctx context.Context) {
	dlq := wire.DLQTopic(wire.DefaultDLQTopic, s.Topic)
	if _, err := s.client.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: []string{s.Topic, dlq}}); err != nil {
		s.log.Warn("delete topic", "topic", s.Topic, "err", err)
	}
	if s.rdb == nil {
		return
	}
	iter := s.rdb.Scan(ctx, 0, s.Prefix+":*", 1000).Iterator()
	var keys []string
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
		if len(keys) == 500 {
			s.rdb.Unlink(ctx, keys...)
			keys = keys[:0]
		}
	}
	if len(keys) > 0 {
		s.rdb.Unlink(ctx, keys...)
	}
}

// FaultResult is what happened when a fault was applied.
type FaultResult struct {
	Fault
	Target  string    // the process, or the service
	Start   time.Time // when the fault hit
	End     time.Time // when it was over (process back, server up, network back)
	Point   []int64   // log ends when it hit: recovered once every commit reached them
	Skipped string    // why it was not applied
	Err     string

	Recovered time.Time // every commit reached Point (zero: never)
	CaughtUp  time.Time // the commit lag was back to its level before the fault
}

func (s *System) claim(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.busy[key] {
		return false
	}
	s.busy[key] = true
	return true
}

func (s *System) release(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.busy, key)
}

// Apply applies f and returns once it is over (the process restarted, the
// server up, the network back).
func (s *System) Apply(ctx context.Context, f Fault) FaultResult {
	r := FaultResult{Fault: f, Target: f.Kind.service()}
	var proc *Proc
	switch f.Kind.service() {
	case "ingest":
		proc = s.Ingests[f.Target%len(s.Ingests)]
	case "worker":
		proc = s.Workers[f.Target%len(s.Workers)]
	}
	key := r.Target
	if proc != nil {
		r.Target, key = proc.Name, proc.Name
	}
	if !s.claim(key) {
		r.Skipped = key + " busy with another fault"
		return r
	}
	defer s.release(key)
	if f.Kind == RedisOld {
		// The snapshot is taken Lag before the crash.
		if err := s.Redis.Save(ctx); err != nil {
			r.Err = "SAVE: " + err.Error()
			return r
		}
		sleepCtx(ctx, f.Lag)
	}
	if pt, err := s.Monitor.LogEnds(ctx); err == nil {
		r.Point = pt
	} else if last, ok := s.Monitor.Last(); ok {
		r.Point = last.LogEnd
	}
	r.Start = time.Now()
	err := s.apply(ctx, f, proc)
	r.End = time.Now()
	if err != nil {
		r.Err = err.Error()
		s.log.Warn("fault failed", "fault", f.String(), "err", err)
	}
	s.log.Info("fault done", "fault", f.String(), "took", r.End.Sub(r.Start).Round(time.Millisecond))
	return r
}

func (s *System) apply(ctx context.Context, f Fault, proc *Proc) error {
	if s.shared && proc == nil && f.Kind != None {
		return fmt.Errorf("%s: the servers are not the harness's own", f.Kind)
	}
	restart := func() error {
		sleepCtx(ctx, f.Hold)
		return proc.Start()
	}
	switch f.Kind {
	case IngestKill, WorkerKill:
		if err := proc.Kill(); err != nil {
			return err
		}
		return restart()
	case IngestStop, WorkerStop:
		if err := proc.Pause(); err != nil {
			return err
		}
		sleepCtx(ctx, f.Hold)
		return proc.Resume()
	case IngestTerm, WorkerTerm:
		took, ex, err := proc.Term(60 * time.Second)
		s.log.Info("SIGTERM", "proc", proc.Name, "exit_code", ex.Code, "took", took.Round(time.Millisecond))
		if err != nil {
			return err
		}
		if ex.Code != 0 {
			return fmt.Errorf("%s exited with code %d %s after SIGTERM, want 0", proc.Name, ex.Code, ex.Signal)
		}
		return restart()
	case RedisEmpty:
		return s.Redis.RestartEmpty(ctx, f.Hold)
	case RedisSaved:
		return s.Redis.RestartSaved(ctx, f.Hold)
	case RedisOld:
		return s.Redis.RestartFromSnapshot(ctx, f.Hold)
	case KafkaTerm:
		if err := s.Kafka.Stop(ctx); err != nil {
			return err
		}
		sleepCtx(ctx, f.Hold)
		return s.Kafka.Start(ctx, false)
	case KafkaKill:
		if err := s.Kafka.Kill(); err != nil {
			return err
		}
		sleepCtx(ctx, f.Hold)
		return s.Kafka.Start(ctx, false)
	case KafkaCut:
		s.KafkaProxy.Cut()
	case RedisCut:
		s.RedisProxy.Cut()
	case KafkaDown:
		s.KafkaProxy.Down()
		sleepCtx(ctx, f.Hold)
		s.KafkaProxy.Up()
	case RedisDown:
		s.RedisProxy.Down()
		sleepCtx(ctx, f.Hold)
		s.RedisProxy.Up()
	case KafkaFreeze:
		s.KafkaProxy.Freeze()
		sleepCtx(ctx, f.Hold)
		s.KafkaProxy.Thaw()
	case RedisFreeze:
		s.RedisProxy.Freeze()
		sleepCtx(ctx, f.Hold)
		s.RedisProxy.Thaw()
	case None:
	default:
		return fmt.Errorf("unknown fault %q", f.Kind)
	}
	return nil
}

// Heal undoes whatever a fault left behind: processes paused or down,
// proxies down or frozen, servers down.
func (s *System) Heal(ctx context.Context) []string {
	var notes []string
	if s.shared {
		for _, p := range append(clone(s.Ingests), s.Workers...) {
			switch {
			case p.Paused():
				_ = p.Resume()
			case !p.Running():
				notes = append(notes, p.Name+" was down at the end")
				if err := p.Start(); err != nil {
					notes = append(notes, err.Error())
				}
			}
		}
		return notes
	}
	s.KafkaProxy.Up()
	s.KafkaProxy.Thaw()
	s.RedisProxy.Up()
	s.RedisProxy.Thaw()
	if !portOpen(s.Redis.Addr()) {
		notes = append(notes, "redis was down at the end of the schedule")
		if err := s.Redis.Start(ctx); err != nil {
			notes = append(notes, "start redis: "+err.Error())
		}
	}
	if !portOpen(s.Kafka.Addr()) {
		notes = append(notes, "kafka was down at the end of the schedule")
		if err := s.Kafka.Start(ctx, false); err != nil {
			notes = append(notes, "start kafka: "+err.Error())
		}
	}
	for _, p := range append(clone(s.Ingests), s.Workers...) {
		switch {
		case p.Paused():
			_ = p.Resume()
		case !p.Running():
			notes = append(notes, p.Name+" was down at the end of the schedule")
			if err := p.Start(); err != nil {
				notes = append(notes, err.Error())
			}
		}
	}
	return notes
}

// Drain waits until every partition's commit reached its log end (the
// producer must be stopped), at most within; it returns how long it took.
func (s *System) Drain(ctx context.Context, within time.Duration) (time.Duration, error) {
	began := time.Now()
	for {
		committed, end, err := s.Monitor.Read(ctx)
		if err == nil && equalOffsets(committed, end) {
			return time.Since(began), nil
		}
		if time.Since(began) > within {
			if err != nil {
				return time.Since(began), fmt.Errorf("not drained after %v: %w", within, err)
			}
			var behind []string
			for p := range end {
				if committed[p] != end[p] {
					behind = append(behind, fmt.Sprintf("p%d committed %d log end %d handled-prefix %d", p, committed[p], end[p], s.Ledger.Prefix(p)))
				}
			}
			return time.Since(began), fmt.Errorf("not drained after %v: %s", within, strings.Join(behind, "; "))
		}
		sleepCtx(ctx, 250*time.Millisecond)
		if ctx.Err() != nil {
			return time.Since(began), ctx.Err()
		}
	}
}

// Shutdown is how the processes ended at the end of a run.
type Shutdown struct {
	Proc string
	Took time.Duration
	Code int
	Err  string
}

// StopProcs SIGTERMs the ingests, then the workers, and reports how each
// exited (want: 0, within timeout).
func (s *System) StopProcs(timeout time.Duration) []Shutdown {
	var out []Shutdown
	var mu sync.Mutex
	for _, group := range [][]*Proc{s.Ingests, s.Workers} {
		var wg sync.WaitGroup
		for _, p := range group {
			if !p.Running() {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				took, ex, err := p.Term(timeout)
				sd := Shutdown{Proc: p.Name, Took: took, Code: ex.Code}
				if err != nil {
					sd.Err = err.Error()
				}
				mu.Lock()
				out = append(out, sd)
				mu.Unlock()
			}()
		}
		wg.Wait()
	}
	return out
}

func equalOffsets(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func createTopic(ctx context.Context, cl *kafka.Client, topic string, partitions int) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	res, err := cl.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
		Topic: topic, NumPartitions: partitions, ReplicationFactor: 1,
	}}})
	if err != nil {
		return fmt.Errorf("create topic %s: %w", topic, err)
	}
	if e := res.Errors[topic]; e != nil && !errors.Is(e, kafka.TopicAlreadyExists) {
		return fmt.Errorf("create topic %s: %w", topic, e)
	}
	for {
		md, err := cl.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
		if err == nil && len(md.Topics) == 1 && md.Topics[0].Error == nil && len(md.Topics[0].Partitions) == partitions {
			ready := true
			for _, p := range md.Topics[0].Partitions {
				if p.Error != nil || p.Leader.Host == "" {
					ready = false
				}
			}
			if ready {
				return nil
			}
		}
		if ctx.Err() != nil {
			return fmt.Errorf("topic %s not ready: %v", topic, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// freePortRun returns the first of n consecutive loopback ports that were
// free a moment ago, below the kernel's ephemeral range (32768-60999 by
// default): a port from that range can be taken by any outgoing connection
// between the check and the server's bind (as testenv does for its brokers).
func freePortRun(n int) (int, error) {
	for range 1000 {
		p := 20000 + rand.IntN(9000)
		ok := true
		for i := 0; i < n && ok; i++ {
			ok = canListen(p + i)
		}
		if ok {
			return p, nil
		}
	}
	return 0, errors.New("no run of free ports in 20000-28999")
}

func canListen(port int) bool {
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

func portOpen(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}
