package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/internal/testenv"
	"github.com/kbridge/kbridge/internal/wire"
)

// ---------------------------------------------------------------- the cluster

// cluster is a Redis Cluster of one test (scripts/redis-cluster.sh): 3
// masters, by default with one replica each and a short
// cluster-node-timeout, so that a replica takes over a killed master in
// about two seconds.
type cluster struct {
	base   int // first port; the nodes are base..base+n-1
	n      int
	dir    string
	tlsDir string // "" without TLS
	rdb    *redis.ClusterClient
}

const clusterNodeTimeout = 1000 // ms

// clusterOpts says how to set a test's cluster up.
type clusterOpts struct {
	replicas int  // per master
	tls      bool // TLS only, a certificate per node, client certificates required
}

func startCluster(t *testing.T) *cluster { return startClusterWith(t, clusterOpts{replicas: 1}) }

func startClusterWith(t *testing.T, o clusterOpts) *cluster {
	t.Helper()
	if !testenv.RealRedis() || !testenv.RealKafka() {
		t.Skip("needs redis-server and a real Kafka (scripts/test.sh sets REDIS_ADDR and KAFKA_BROKERS)")
	}
	c := &cluster{base: clusterPorts(t), n: 3 * (1 + o.replicas), dir: t.TempDir()}
	if o.tls {
		c.tlsDir = filepath.Join(c.dir, "tls")
	}
	began := time.Now()
	if out, err := script("redis-cluster.sh", c.env(), "start"); err != nil {
		t.Fatalf("redis-cluster.sh start: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := script("redis-cluster.sh", c.env(), "stop"); err != nil {
			t.Errorf("redis-cluster.sh stop: %v\n%s", err, out)
		}
	})
	// As kbridge's --redis-cluster client (--redis-cluster-reload-interval):
	// read the slot map again after a second, or a dead master is used for
	// a minute; each node's certificate checked against its own address.
	opt := &redis.ClusterOptions{Addrs: c.addrs(), ContextTimeoutEnabled: true, ClusterStateReloadInterval: time.Second}
	if c.tlsDir != "" {
		opt.TLSConfig = c.tlsConfig(t)
		opt.NewClient = func(o *redis.Options) *redis.Client {
			o.TLSConfig = c.tlsConfig(t)
			return redis.NewClient(o)
		}
	}
	c.rdb = redis.NewClusterClient(opt)
	t.Cleanup(func() { c.rdb.Close() })
	t.Logf("Redis Cluster 3 masters × %d replica(s)%s on 127.0.0.1:%d-%d (cluster-node-timeout %dms), started in %v",
		o.replicas, map[bool]string{true: ", TLS with a certificate per node", false: ""}[o.tls], c.base, c.base+c.n-1,
		clusterNodeTimeout, time.Since(began).Round(time.Millisecond))
	return c
}

// tlsConfig is how the test's own clients reach a node of a TLS cluster:
// they dial 127.0.0.1, which every node's certificate names.
func (c *cluster) tlsConfig(t *testing.T) *tls.Config {
	t.Helper()
	ca, err := os.ReadFile(filepath.Join(c.tlsDir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	pair, err := tls.LoadX509KeyPair(filepath.Join(c.tlsDir, "client.crt"), filepath.Join(c.tlsDir, "client.key"))
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{ServerName: "127.0.0.1", RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
}

// clusterPorts finds 6 consecutive free ports whose cluster bus ports
// (+10000) are free too, in this package's range 11200-11899 (buses
// 21200-21899): below the kernel's ephemeral range (32768-60999 by
// default), as testenv's brokers are. In 35200-35899, the outgoing
// connections of the packages tested beside this one took enough of the
// ports that no window of 6 and their buses was free, and all four cluster
// tests failed at once (CI run on 3a274d4).
func clusterPorts(t *testing.T) int {
	t.Helper()
	for base := 11200; base < 11900; base += 20 {
		free := true
		for i := range 6 {
			for _, p := range []int{base + i, base + i + 10000} {
				l, err := net.Listen("tcp", addr(p))
				if err != nil {
					free = false
					break
				}
				l.Close()
			}
		}
		if free {
			return base
		}
	}
	t.Fatal("no 6 free ports (and bus ports) in 11200-11899")
	return 0
}

func (c *cluster) env() []string {
	env := []string{"REDIS_CLUSTER_PORT=" + strconv.Itoa(c.base), "REDIS_CLUSTER_DIR=" + c.dir,
		"REDIS_CLUSTER_REPLICAS=" + strconv.Itoa(c.n/3-1), "REDIS_CLUSTER_NODE_TIMEOUT=" + strconv.Itoa(clusterNodeTimeout)}
	if c.tlsDir != "" {
		env = append(env, "REDIS_CLUSTER_TLS=1", "REDIS_CLUSTER_TLS_DIR="+c.tlsDir, "REDIS_CLUSTER_TLS_AUTH_CLIENTS=yes")
	}
	return env
}

func (c *cluster) addrs() []string {
	var a []string
	for i := range c.n {
		a = append(a, addr(c.base+i))
	}
	return a
}

// url is kbridge's --redis-url for the cluster (with --redis-cluster): every
// node; with TLS, the first node only, by the name localhost, which only
// that node's certificate names (the others learn their addresses from
// CLUSTER SLOTS).
func (c *cluster) url() string {
	if c.tlsDir != "" {
		return "rediss://localhost:" + strconv.Itoa(c.base) + "/0"
	}
	a := c.addrs()
	return "redis://" + a[0] + "/0?addr=" + strings.Join(a[1:], "&addr=")
}

// redisArgs are kbridge's Redis flags for the cluster.
func (c *cluster) redisArgs() []string {
	args := []string{"--redis-url", c.url(), "--redis-cluster", "--redis-cluster-reload-interval", "1s"}
	if c.tlsDir != "" {
		args = append(args, "--redis-tls-ca", filepath.Join(c.tlsDir, "ca.crt"),
			"--redis-tls-cert", filepath.Join(c.tlsDir, "client.crt"), "--redis-tls-key", filepath.Join(c.tlsDir, "client.key"))
	}
	return args
}

// nodeOpts are the options of a client of one node.
func (c *cluster) nodeOpts(t *testing.T, a string) *redis.Options {
	o := &redis.Options{Addr: a, ContextTimeoutEnabled: true}
	if c.tlsDir != "" {
		o.TLSConfig = c.tlsConfig(t)
	}
	return o
}

// node is one line of CLUSTER NODES.
type node struct {
	id, addr string
	master   bool
	failed   bool
	masterID string
	slots    [][2]int
}

func (n node) owns(slot int) bool {
	for _, r := range n.slots {
		if slot >= r[0] && slot <= r[1] {
			return true
		}
	}
	return false
}

// nodes asks a live node (not skip) for CLUSTER NODES.
func (c *cluster) nodes(t *testing.T, skip ...string) []node {
	t.Helper()
	for _, a := range c.addrs() {
		if slices.Contains(skip, a) {
			continue
		}
		o := c.nodeOpts(t, a)
		o.DialTimeout, o.ReadTimeout = time.Second, 2*time.Second
		cl := redis.NewClient(o)
		out, err := cl.ClusterNodes(context.Background()).Result()
		cl.Close()
		if err != nil {
			continue
		}
		var ns []node
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			f := strings.Fields(line)
			if len(f) < 8 {
				continue
			}
			n := node{id: f[0], addr: strings.SplitN(f[1], "@", 2)[0], master: strings.Contains(f[2], "master"),
				failed: strings.Contains(f[2], "fail"), masterID: f[3]}
			for _, s := range f[8:] {
				if strings.HasPrefix(s, "[") {
					continue // a slot being migrated
				}
				lo, hi, _ := strings.Cut(s, "-")
				a, _ := strconv.Atoi(lo)
				b := a
				if hi != "" {
					b, _ = strconv.Atoi(hi)
				}
				n.slots = append(n.slots, [2]int{a, b})
			}
			ns = append(ns, n)
		}
		return ns
	}
	t.Fatal("no cluster node answers CLUSTER NODES")
	return nil
}

// ownerOf returns the live master that serves slot.
func (c *cluster) ownerOf(t *testing.T, slot int, skip ...string) (node, bool) {
	for _, n := range c.nodes(t, skip...) {
		if n.master && !n.failed && n.owns(slot) {
			return n, true
		}
	}
	return node{}, false
}

func (c *cluster) node(t *testing.T, a string) *redis.Client {
	cl := redis.NewClient(c.nodeOpts(t, a))
	t.Cleanup(func() { cl.Close() })
	return cl
}

// top returns the offset of the last entry of a stream on one node, -1 if none.
func top(ctx context.Context, cl *redis.Client, stream string) int64 {
	xs, err := cl.XRevRangeN(ctx, stream, "+", "-", 1).Result()
	if err != nil || len(xs) == 0 {
		return -1
	}
	off, err := wire.ParseID(xs[0].ID)
	if err != nil {
		return -1
	}
	return off
}

// ---------------------------------------------------------------- the load

// load runs a kbridge ingest process and a kbridge worker process on the
// cluster (--redis-cluster, as users run them), the worker handing each
// record to an HTTP endpoint of the test that records it, while a producer
// writes records until told to stop; it checks the commits as they move.
type load struct {
	t          *testing.T
	c          *cluster
	brokers    []string
	topic      string
	group      string
	prefix     string
	partitions int
	ingest     *proc
	worker     *proc

	produced atomic.Int64
	stopProd chan struct{}
	prodDone chan struct{}

	mu      sync.Mutex
	handled map[[2]int64]int // (partition, offset) → handler calls

	watchStop  chan struct{}
	watchDone  chan struct{}
	violations []string // commits past an offset not handled yet
	samples    int
}

func newLoad(t *testing.T, c *cluster, topic string, partitions int) *load {
	t.Helper()
	l := &load{t: t, c: c, brokers: testenv.Kafka(t), topic: topic, group: testenv.Name(t), prefix: testenv.Name(t),
		partitions: partitions, handled: map[[2]int64]int{}, stopProd: make(chan struct{}), prodDone: make(chan struct{}),
		watchStop: make(chan struct{}), watchDone: make(chan struct{})}
	testenv.CreateTopic(t, l.brokers, topic, partitions)
	return l
}

func (l *load) streams() []string {
	var s []string
	for p := range l.partitions {
		s = append(s, wire.StreamKey(l.prefix, l.topic, p))
	}
	return s
}

// start starts the producer (batches of 100 records every 100ms), the ingest
// process, the worker and the commit watcher.
func (l *load) start() {
	t := l.t
	t.Helper()
	go func() {
		defer close(l.prodDone)
		for {
			select {
			case <-l.stopProd:
				return
			default:
			}
			n := l.produced.Load()
			testenv.ProduceSized(t, l.brokers, l.topic, int(n), 100, 200)
			l.produced.Add(100)
			time.Sleep(100 * time.Millisecond)
		}
	}()
	l.ingest = startKbridge(t, "ingest", nil, append(append(l.c.redisArgs(), "--prefix", l.prefix,
		"ingest", "--brokers", strings.Join(l.brokers, ","), "--topics", l.topic, "--group", l.group, "--partition-cap", "2000"), fastIngest...)...)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, err1 := strconv.ParseInt(r.Header.Get("Kbridge-Partition"), 10, 64)
		o, err2 := strconv.ParseInt(r.Header.Get("Kbridge-Offset"), 10, 64)
		if err1 != nil || err2 != nil {
			http.Error(w, "no Kbridge-Partition/Kbridge-Offset", http.StatusBadRequest)
			return
		}
		l.mu.Lock()
		l.handled[[2]int64{p, o}]++
		l.mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	l.worker = startKbridge(t, "worker", nil, append(l.c.redisArgs(), "--prefix", l.prefix,
		"worker", "--http", srv.URL, "--concurrency", "16", "--visibility-timeout", "3s", "--discovery-interval", "200ms",
		"--backoff-min", "10ms", "--backoff-max", "100ms")...)
	go l.watch()
	t.Cleanup(func() { l.stopWatch() })
}

// watch samples the committed offsets and checks each against what the
// worker had handled by then: a commit must never pass an unhandled offset.
func (l *load) watch() {
	defer close(l.watchDone)
	for {
		select {
		case <-l.watchStop:
			return
		case <-time.After(200 * time.Millisecond):
		}
		committed := testenv.Committed(l.t, l.brokers, l.group, l.topic, l.partitions)
		l.mu.Lock()
		l.samples++
		for p, c := range committed {
			for o := int64(0); o < c; o++ {
				if l.handled[[2]int64{int64(p), o}] == 0 {
					l.violations = append(l.violations, fmt.Sprintf("partition %d committed %d but offset %d was not handled", p, c, o))
					break
				}
			}
		}
		l.mu.Unlock()
	}
}

func (l *load) stopWatch() {
	select {
	case <-l.watchStop:
	default:
		close(l.watchStop)
	}
	<-l.watchDone
}

func (l *load) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.handled)
}

// finish stops the producer, waits for the commits to reach the log end,
// stops everything and checks the ledger: every produced record handled at
// least once, no commit ever past an unhandled offset. It returns the
// number of records and of duplicate handler calls.
func (l *load) finish(within time.Duration) (records, dups int) {
	t := l.t
	t.Helper()
	close(l.stopProd)
	<-l.prodDone
	ends := testenv.LogEnd(t, l.brokers, l.topic, l.partitions)
	var committed map[int]int64
	testenv.Eventually(t, within, func() bool {
		committed = testenv.Committed(t, l.brokers, l.group, l.topic, l.partitions)
		for p, e := range ends {
			if committed[p] != e {
				return false
			}
		}
		return true
	}, "commits %v, want the log ends %v", func() any { return committed }, ends)
	l.stopWatch()
	l.worker.stop(t)
	l.ingest.stop(t)
	l.mu.Lock()
	defer l.mu.Unlock()
	lost := 0
	var first string
	for p, e := range ends {
		records += int(e)
		for o := int64(0); o < e; o++ {
			n := l.handled[[2]int64{int64(p), o}]
			if n == 0 {
				if lost == 0 {
					first = fmt.Sprintf("%d/%d", p, o)
				}
				lost++
			}
			if n > 1 {
				dups += n - 1
			}
		}
	}
	if lost != 0 {
		t.Errorf("LOST %d of %d records (first %s)", lost, records, first)
	}
	if len(l.violations) > 0 {
		t.Errorf("%d commit samples passed an unhandled offset, e.g. %s", len(l.violations), l.violations[0])
	}
	t.Logf("ledger: %d records, lost %d, duplicate handler calls %d; %d commit samples, none past an unhandled offset: %v",
		records, lost, dups, l.samples, len(l.violations) == 0)
	return records, dups
}

// ---------------------------------------------------------------- the tests

// TestClusterFailover kills (SIGKILL) the master that holds some partition
// streams while records flow, after cutting its replica off so that the
// replica is promoted without the master's last writes — the loss a real
// failover can cause with asynchronous replication. Ingest and worker are
// kbridge processes with --redis-cluster (and its default slot map reload
// of 1s). The ingest must notice that the streams went back (its loss
// detection), fetch the lost records again from Kafka, and lose nothing:
// every produced offset handled at least once, no commit ever past an
// unhandled offset; the worker process must follow the promoted replica.
// Every commit must reach its log end: that caught a worker that, when one
// node's XREADGROUP failed (CLUSTERDOWN) after others' had delivered, kept
// those entries leased and never ran them, so that partitions on the
// masters that stayed up stopped committing (worker:
// TestPerSlotProbeFailureKeepsWhatItRead).
func TestClusterFailover(t *testing.T) {
	c := startCluster(t)
	ctx := context.Background()
	l := newLoad(t, c, testenv.Name(t), 8)
	l.start()
	testenv.Eventually(t, 60*time.Second, func() bool { return l.count() >= 2000 }, "the worker handled only %d records", l.count())

	// The victim: the master of partition 0's stream, and its replica.
	s0 := l.streams()[0]
	m, ok := c.ownerOf(t, wire.Slot(s0))
	if !ok {
		t.Fatalf("no master serves %s", s0)
	}
	var r node
	var victims []string // the streams on m
	for _, n := range c.nodes(t) {
		if !n.master && n.masterID == m.id {
			r = n
		}
	}
	for _, s := range l.streams() {
		if m.owns(wire.Slot(s)) {
			victims = append(victims, s)
		}
	}
	if r.id == "" {
		t.Fatalf("master %s has no replica", m.addr)
	}
	pid := func(a string) int {
		_, port, _ := strings.Cut(a, ":")
		out, err := script("redis-cluster.sh", c.env(), "pid", port)
		if err != nil {
			t.Fatalf("pid of %s: %v %s", a, err, out)
		}
		p, err := strconv.Atoi(strings.TrimSpace(lastLine(out)))
		if err != nil {
			t.Fatalf("pid of %s: %q", a, out)
		}
		return p
	}
	rpid := pid(r.addr)
	mcl := c.node(t, m.addr)
	// However long the replica stays cut off on a slow machine, it must still
	// stand for election (by default a replica whose data is older than 10 ×
	// cluster-node-timeout does not).
	if err := c.node(t, r.addr).ConfigSet(ctx, "cluster-replica-validity-factor", "0").Err(); err != nil {
		t.Fatal(err)
	}

	// Cut the replica off: stop it, drop its link on the master. From now on
	// the master's writes reach no replica.
	if err := syscall.Kill(rpid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	t.Cleanup(func() {
		if stopped {
			_ = syscall.Kill(rpid, syscall.SIGCONT)
		}
	})
	if err := mcl.Do(ctx, "client", "kill", "type", "replica").Err(); err != nil {
		t.Fatalf("CLIENT KILL TYPE replica on %s: %v", m.addr, err)
	}
	before := map[string]int64{}
	for _, s := range victims {
		before[s] = top(ctx, mcl, s)
	}
	// Let the ingest append more on the master alone.
	var onMaster map[string]int64
	testenv.Eventually(t, 20*time.Second, func() bool {
		onMaster = map[string]int64{}
		grew := 0
		for _, s := range victims {
			onMaster[s] = top(ctx, mcl, s)
			if onMaster[s] > before[s]+50 {
				grew++
			}
		}
		return grew == len(victims)
	}, "the ingest appended too little to %v on the master: before %v, now %v", victims, before, onMaster)

	if out, err := script("redis-cluster.sh", c.env(), "kill-node", strings.SplitN(m.addr, ":", 2)[1]); err != nil {
		t.Fatalf("kill-node %s: %v\n%s", m.addr, err, out)
	}
	killed := time.Now()
	if err := syscall.Kill(rpid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	stopped = false
	var promoted node
	testenv.Eventually(t, 60*time.Second, func() bool {
		n, ok := c.ownerOf(t, wire.Slot(s0), m.addr)
		promoted = n
		return ok && n.id == r.id
	}, "replica %s was not promoted for the slots of %s (owner now %+v)", r.addr, m.addr, promoted)
	failover := time.Since(killed)

	rcl := c.node(t, r.addr)
	var lostStreams []string
	for _, s := range victims {
		after := top(ctx, rcl, s)
		t.Logf("%s: top %d on the master when the replica was cut off, %d on the master when killed, %d on the promoted replica",
			s, before[s], onMaster[s], after)
		if after < onMaster[s] {
			lostStreams = append(lostStreams, s)
		}
	}
	if len(lostStreams) == 0 {
		t.Fatalf("the promoted replica lost no write: the test did not create the loss it is about")
	}
	// The ingest must notice each loss.
	testenv.Eventually(t, 60*time.Second, func() bool {
		for _, s := range lostStreams {
			if !l.ingest.has("redis lost writes", s) {
				return false
			}
		}
		return true
	}, "the ingest did not log the lost writes of %v", lostStreams)
	t.Logf("master %s SIGKILLed; replica %s promoted after %v; %d of %d streams on it lost writes and the ingest noticed each",
		m.addr, r.addr, failover.Round(time.Millisecond), len(lostStreams), len(victims))

	// Records keep flowing after the failover, through both processes.
	n := l.count()
	testenv.Eventually(t, 60*time.Second, func() bool { return l.count() >= n+2000 }, "the worker stopped after the failover: %d", l.count())
	records, dups := l.finish(2 * time.Minute)
	t.Logf("failover under load: %d records, 0 lost, %d duplicate handler calls (entries the promoted replica lost were fetched and delivered again)", records, dups)
}

// TestClusterReshard migrates the slot of a partition stream from one master
// to another with `redis-cli --cluster reshard` while records flow (the
// ingest appends, the worker reads and acknowledges): nothing lost, no
// commit past an unhandled offset, and the migration is not mistaken for
// Redis losing writes (0 loss detections). The nodes' INFO errorstats show
// that the processes were redirected (ASK or MOVED), so the test did run
// through a migration rather than around it.
func TestClusterReshard(t *testing.T) {
	c := startCluster(t)
	// A topic whose partition 0 stream sits among the first 64 slots of a
	// master, so that moving 64 slots moves it.
	ns := c.nodes(t)
	var topic string
	var from node
	for i := 0; topic == "" && i < 10000; i++ {
		cand := testenv.Name(t)
		slot := wire.Slot(wire.StreamKey("x", cand, 0))
		for _, n := range ns {
			if n.master && len(n.slots) > 0 && slot >= n.slots[0][0] && slot < n.slots[0][0]+64 {
				topic, from = cand, n
			}
		}
	}
	if topic == "" {
		t.Fatal("found no topic name whose partition 0 sits in the first 64 slots of a master")
	}
	var to node
	for _, n := range ns {
		if n.master && n.id != from.id {
			to = n
			break
		}
	}
	l := newLoad(t, c, topic, 8)
	l.start()
	testenv.Eventually(t, 60*time.Second, func() bool { return l.count() >= 2000 }, "the worker handled only %d records", l.count())
	s0 := l.streams()[0]
	slot := wire.Slot(s0)
	if n, _ := c.ownerOf(t, slot); n.id != from.id {
		t.Fatalf("slot %d of %s is on %s, want %s", slot, s0, n.addr, from.addr)
	}
	length := c.rdb.XLen(context.Background(), s0).Val()
	// From here on only kbridge's processes (and redis-cli, which sends no
	// key commands) talk to the nodes' keys: reset the error counters.
	for _, a := range c.addrs() {
		if err := c.node(t, a).ConfigResetStat(context.Background()).Err(); err != nil {
			t.Fatalf("CONFIG RESETSTAT on %s: %v", a, err)
		}
	}

	began := time.Now()
	cmd := exec.Command("redis-cli", "--cluster", "reshard", from.addr, "--cluster-from", from.id, "--cluster-to", to.id,
		"--cluster-slots", "64", "--cluster-yes")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli --cluster reshard: %v\n%s", err, out)
	}
	took := time.Since(began)
	if n, _ := c.ownerOf(t, slot); n.id != to.id {
		t.Fatalf("after the reshard slot %d is on %s, want %s\n%s", slot, n.addr, to.addr, out)
	}
	movedSlots := map[string]bool{} // redis-cli prints each slot in its plan and again as it moves it
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[0] == "Moving" && f[1] == "slot" {
			movedSlots[f[2]] = true
		}
	}
	moved := len(movedSlots)
	t.Logf("resharded %d slots from %s to %s in %v under load, among them slot %d of %s (XLEN %d when it started)",
		moved, from.addr, to.addr, took.Round(time.Millisecond), slot, s0, length)

	n := l.count()
	testenv.Eventually(t, 60*time.Second, func() bool { return l.count() >= n+2000 }, "the worker stopped after the reshard: %d", l.count())
	records, dups := l.finish(2 * time.Minute)
	losses := strings.Count(l.ingest.output(), "redis lost writes")
	if losses != 0 {
		t.Errorf("the ingest took the migration for lost writes %d times: %s", losses, l.ingest.line("redis lost writes"))
	}
	redirects := map[string]int{}
	for _, a := range c.addrs() {
		for k, v := range errorStats(t, c.node(t, a)) {
			redirects[k] += v
		}
	}
	if redirects["ASK"]+redirects["MOVED"] == 0 {
		t.Errorf("no ASK or MOVED redirection on any node (errorstats %v): the processes never ran into the migration", redirects)
	}
	t.Logf("reshard under load: %d records, 0 lost, %d duplicate handler calls, %d loss detections by the ingest; redirections: ASK %d, MOVED %d, TRYAGAIN %d",
		records, dups, losses, redirects["ASK"], redirects["MOVED"], redirects["TRYAGAIN"])
}

// errorStats reads INFO errorstats of one node: error replies by prefix.
func errorStats(t *testing.T, cl *redis.Client) map[string]int {
	t.Helper()
	info, err := cl.Info(context.Background(), "errorstats").Result()
	if err != nil {
		t.Fatalf("INFO errorstats: %v", err)
	}
	out := map[string]int{}
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "errorstat_") {
			continue
		}
		if v, ok := strings.CutPrefix(rest, "count="); ok {
			out[strings.TrimPrefix(name, "errorstat_")], _ = strconv.Atoi(v)
		}
	}
	return out
}

// TestClusterTLS runs ingest, worker and status with --redis-cluster over
// rediss:// on a Redis Cluster whose nodes each have a certificate of their
// own (their own name and 127.0.0.1), seeded by the name localhost, which
// only the first node's certificate names, with client certificates
// required: every record is handled and committed, on streams spread over
// every master. go-redis alone checks every node's certificate against the
// seed's name: the test first shows that such a client fails on the other
// nodes, so it would catch kbridge doing the same.
func TestClusterTLS(t *testing.T) {
	c := startClusterWith(t, clusterOpts{tls: true})
	ctx := context.Background()

	// go-redis's own handling of the same URL: the seed's name for all.
	plain, err := redis.ParseClusterURL(c.url())
	if err != nil {
		t.Fatal(err)
	}
	tc := c.tlsConfig(t)
	plain.TLSConfig.RootCAs, plain.TLSConfig.Certificates = tc.RootCAs, tc.Certificates
	naive := redis.NewClusterClient(plain)
	defer naive.Close()
	var naiveErr error
	for i := 0; i < 64 && naiveErr == nil; i++ { // keys on every master
		naiveErr = naive.Set(ctx, fmt.Sprintf("%s-probe-%d", testenv.Name(t), i), "x", time.Minute).Err()
	}
	if naiveErr == nil || !strings.Contains(naiveErr.Error(), "not localhost") {
		t.Fatalf("a go-redis cluster client with the seed's name for every node: %v; want a certificate error on the other nodes (the setup does not reproduce what the test is about)", naiveErr)
	}

	// A topic whose 6 partition streams are spread over all 3 masters.
	ns := c.nodes(t)
	var topic string
	for i := 0; topic == "" && i < 1000; i++ {
		cand, on := fmt.Sprintf("%s-%d", testenv.Name(t), i), map[string]bool{}
		for p := range 6 {
			for _, n := range ns {
				if n.master && n.owns(wire.Slot(wire.StreamKey("x", cand, p))) {
					on[n.id] = true
				}
			}
		}
		if len(on) == 3 {
			topic = cand
		}
	}
	r := newPipelineOn(t, topic, 6, 600, c.redisArgs()...)
	r.start(t, nil)
	took := r.waitCommitted(t, 60*time.Second)
	if n, first := r.ledger.missing(t, r.ends); n != 0 {
		t.Errorf("%d records never handled (first %s)", n, first)
	}
	lag := r.statusLag(t)
	if lag != 0 {
		t.Errorf("kbridge status: lag %d, want 0", lag)
	}
	r.worker.stop(t)
	r.ingest.stop(t)
	masters := map[string]bool{}
	for p := range r.partitions {
		if n, ok := c.ownerOf(t, wire.Slot(wire.StreamKey(r.prefix, r.topic, p))); ok {
			masters[n.addr] = true
		}
	}
	if len(masters) < 3 {
		t.Errorf("the %d streams are on %d masters, want all 3 (each with its own certificate)", r.partitions, len(masters))
	}
	t.Logf("TLS cluster seeded by localhost, a certificate per node, client certificates: %d records over %d partitions on %d masters committed in %v, status lag %d; go-redis alone: %v",
		r.records, r.partitions, len(masters), took.Round(time.Millisecond), lag, naiveErr)
}

func lastLine(s string) string {
	sc := bufio.NewScanner(strings.NewReader(s))
	var last string
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) != "" {
			last = sc.Text()
		}
	}
	return last
}

// aclClusterCommands are what kbridge needs beyond aclCommands on a Redis
// Cluster: go-redis reads the slot map with CLUSTER SLOTS and the key
// positions of commands with COMMAND (refused, it asks again and again).
var aclClusterCommands = []string{"cluster|slots", "command"}

// TestClusterACLUser runs ingest, worker, status and dlq list with
// --redis-cluster as the ACL user of TestRedisACLUser, created on every node
// with aclCommands and aclClusterCommands: everything flows, and INFO
// commandstats of every node shows no command outside the rule and none
// rejected.
func TestClusterACLUser(t *testing.T) {
	c := startCluster(t)
	ctx := context.Background()
	pw := secret("redis-kbridge-pw")
	url := strings.Replace(c.url(), "redis://", "redis://kbridge@", 1)
	r := newPipeline(t, 4, 400, "--redis-url", url, "--redis-cluster", "--redis-password-file", writeSecret(t, pw))
	rule := append(aclRule(r.prefix, append(slices.Clone(aclCommands), aclClusterCommands...)), ">"+pw)
	replicas := map[string]bool{} // read before the stats are reset: CLUSTER NODES is the test's
	for _, n := range c.nodes(t) {
		replicas[n.addr] = !n.master
	}
	clients := map[string]*redis.Client{}
	for _, a := range c.addrs() {
		cl := c.node(t, a)
		clients[a] = cl
		if err := cl.Do(ctx, append([]any{"acl", "setuser", "kbridge"}, rule...)...).Err(); err != nil {
			t.Fatalf("ACL SETUSER on %s: %v", a, err)
		}
		if err := cl.ConfigResetStat(ctx).Err(); err != nil {
			t.Fatal(err)
		}
	}
	r.start(t, nil)
	took := r.waitCommitted(t, 60*time.Second)
	if n, first := r.ledger.missing(t, r.ends); n != 0 {
		t.Errorf("%d records never handled (first %s)", n, first)
	}
	lag := r.statusLag(t)
	r.kbridge(t, "dlq", "list")
	r.worker.stop(t)
	r.ingest.stop(t)
	allowed := append(slices.Clone(aclCommands), aclClusterCommands...)
	var used []string
	for a, cl := range clients {
		u, rejected := commandStats(t, cl)
		delete(rejected, "config|get") // the ingest's eviction check, left out of the rule on purpose
		if len(rejected) > 0 {
			t.Errorf("%s rejected %v", a, rejected)
		}
		for _, cmd := range u {
			// the test's own ACL SETUSER/RESETSTAT; HELLO/AUTH need no permission; replication
			if slices.Contains([]string{"config|resetstat", "config|get", "hello", "auth", "acl|setuser", "ping", "replconf", "psync", "sync"}, cmd) {
				continue
			}
			// A replica counts what its master's replication stream runs,
			// keys that expired on the master included: DEL (UNLINK with
			// lazyfree-lazy-expire) of the ingest's probe keys (1 ms TTL)
			// and of the status hashes.
			if replicas[a] && slices.Contains([]string{"select", "multi", "exec", "pexpireat", "del", "unlink"}, cmd) {
				continue
			}
			if !slices.Contains(allowed, cmd) {
				t.Errorf("%s (replica %v): kbridge called %s, which is not in the rule", a, replicas[a], cmd)
			}
			if !slices.Contains(used, cmd) {
				used = append(used, cmd)
			}
		}
	}
	slices.Sort(used)
	t.Logf("Redis Cluster, ACL user ~%s:* with %d commands: %d records committed in %v, status lag %d; called: %s",
		r.prefix, len(allowed), r.records, took.Round(time.Millisecond), lag, strings.Join(used, " "))
}
