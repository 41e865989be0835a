package worker

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
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

// kbridgeBin returns the kbridge binary: KBRIDGE_BIN, or built from
// ./cmd/kbridge.
func kbridgeBin(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("KBRIDGE_BIN")
	if bin == "" {
		bin = testenv.BuildKbridge(t)
	}
	if out, err := exec.Command(bin, "worker", "--help").CombinedOutput(); err != nil || !bytes.Contains(out, []byte("--exec")) {
		t.Fatalf("%s has no worker command (register workerCommand() and dlqCommand() in cmd/kbridge/commands.go): %v\n%s", bin, err, out)
	}
	return bin
}

// proc is a kbridge process of the test.
type proc struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func startProc(t *testing.T, bin string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(bin, args...), out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("output of %v:\n%s", args, tail(p.out.String(), 3000))
		}
	})
	return p
}

// stop sends sig and waits for the exit; it returns the exit code.
func (p *proc) stop(t *testing.T, sig os.Signal, within time.Duration) int {
	t.Helper()
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(within):
		t.Fatalf("process did not exit %v after %v", within, sig)
	}
	return p.cmd.ProcessState.ExitCode()
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// ledger is an HTTP endpoint that records every record it completes.
type ledger struct {
	mu    sync.Mutex
	count map[string]int // "<partition>/<offset>" → completed requests
	total atomic.Int64
	delay time.Duration
	srv   *httptest.Server
}

func newLedger(t *testing.T, delay time.Duration, fail func(r *http.Request) int) *ledger {
	l := &ledger{count: map[string]int{}, delay: delay}
	l.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if fail != nil {
			if code := fail(r); code != 0 {
				w.WriteHeader(code)
				return
			}
		}
		time.Sleep(l.delay) // the work in flight
		l.mu.Lock()
		l.count[r.Header.Get("Kbridge-Partition")+"/"+r.Header.Get("Kbridge-Offset")]++
		l.mu.Unlock()
		l.total.Add(1)
	}))
	t.Cleanup(l.srv.Close)
	return l
}

func (l *ledger) stats() (distinct, duplicates int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.count {
		duplicates += c - 1
	}
	return len(l.count), duplicates
}

// consumerPending returns how many entries the named consumer holds over
// the streams.
func consumerPending(t *testing.T, rdb *redis.Client, streams []string, group, consumer string) int {
	n := 0
	for _, s := range streams {
		ps, err := rdb.XPendingExt(context.Background(), &redis.XPendingExtArgs{Stream: s, Group: group, Start: "-", End: "+", Count: 100000, Consumer: consumer}).Result()
		if err != nil {
			t.Fatalf("XPENDING %s: %v", s, err)
		}
		n += len(ps)
	}
	return n
}

// TestFourWorkersSIGKILL: 4 "kbridge worker --http" processes × 32
// concurrency process 50,000 records end to end; two are SIGKILLed mid-run.
// Nothing is lost, duplicates are at most what the killed ones held, their
// pending entries are reclaimed within the visibility timeout + 5s, the
// ingest's commits reach the log end, and the survivors exit 0 on SIGTERM.
func TestFourWorkersSIGKILL(t *testing.T) {
	testenv.RequireReal(t, "SIGKILL of worker processes")
	const (
		records    = 50000
		partitions = 8
		visibility = 5 * time.Second
	)
	bin := kbridgeBin(t)
	p := newPipeline(t, partitions)
	l := newLedger(t, 2*time.Millisecond, nil)
	start := time.Now()
	go testenv.Produce(t, p.brokers, p.topic, 0, records)

	names := make([]string, 4)
	procs := make([]*proc, 4)
	for i := range procs {
		names[i] = fmt.Sprintf("%s-w%d", p.prefix, i)
		procs[i] = startProc(t, bin, []string{"KBRIDGE_REDIS_URL=redis://" + p.redisAddr + "/0", "KBRIDGE_PREFIX=" + p.prefix},
			"worker", "--http", l.srv.URL, "--concurrency", "32", "--consumer", names[i],
			"--visibility-timeout", visibility.String(), "--reclaim-interval", "500ms", "--discovery-interval", "500ms")
	}
	testenv.Eventually(t, 3*time.Minute, func() bool { return l.total.Load() >= records*3/10 }, "workers did not get going: %d handled", l.total.Load())
	var held int
	for _, i := range []int{0, 1} {
		_ = procs[i].cmd.Process.Signal(syscall.SIGKILL)
		<-procs[i].done
	}
	killed := time.Now()
	for _, i := range []int{0, 1} {
		held += consumerPending(t, p.rdb, p.streams(), DefaultGroup, names[i])
	}
	handledAtKill := l.total.Load()
	testenv.Eventually(t, visibility+5*time.Second+2*time.Second, func() bool {
		return consumerPending(t, p.rdb, p.streams(), DefaultGroup, names[0])+consumerPending(t, p.rdb, p.streams(), DefaultGroup, names[1]) == 0
	}, "entries of the killed workers not reclaimed")
	reclaimedIn := time.Since(killed)
	if reclaimedIn > visibility+5*time.Second {
		t.Errorf("killed workers' %d entries reclaimed after %v; want within %v", held, reclaimedIn, visibility+5*time.Second)
	}
	testenv.Eventually(t, 5*time.Minute, func() bool { d, _ := l.stats(); return d == records }, "records handled: want %d", records)
	p.committedAll(t, time.Minute)
	took := time.Since(start)
	for _, i := range []int{2, 3} {
		if code := procs[i].stop(t, syscall.SIGTERM, 30*time.Second); code != 0 {
			t.Errorf("worker %d exited %d on SIGTERM, want 0", i, code)
		}
	}
	distinct, dups := l.stats()
	t.Logf("%d records, %d partitions, 4 workers x 32: %d handled at the kill; killed workers held %d entries, reclaimed %v after the kill (visibility %v); %d distinct, %d duplicates; commits at the log end %v after the start",
		records, partitions, handledAtKill, held, reclaimedIn.Round(time.Millisecond), visibility, distinct, dups, took.Round(time.Millisecond))
	if distinct != records {
		t.Errorf("distinct records handled = %d, want %d", distinct, records)
	}
	if dups > held {
		t.Errorf("duplicates = %d, more than the %d entries the killed workers held", dups, held)
	}
	for _, s := range p.streams() {
		if n := p.pending(t, s, DefaultGroup); n != 0 {
			t.Errorf("%s: %d pending at the end", s, n)
		}
	}
}

// TestRunnerModesEndToEnd: "kbridge worker --exec" and "--http" process
// records from Kafka end to end: a record that fails once is retried with
// backoff, one that always fails is dead-lettered (and "kbridge dlq list"
// shows it) while the commits reach the log end, and "kbridge dlq replay"
// hands it back to the worker, which completes it once fixed. In HTTP mode
// the endpoint first answers 429 with Retry-After: the worker backs off
// without counting deliveries.
func TestRunnerModesEndToEnd(t *testing.T) {
	bin := kbridgeBin(t)
	for _, mode := range []string{"exec", "http"} {
		t.Run(mode, func(t *testing.T) {
			p := newPipeline(t, 2)
			testenv.Produce(t, p.brokers, p.topic, 0, 60)
			dir := t.TempDir()
			fixedFile := dir + "/fixed"
			var handler []string
			var l *ledger
			var throttled atomic.Int64
			switch mode {
			case "exec":
				// v10 fails on its first delivery; v20 until fixed.
				script := `v=$(cat)
if [ "$v" = v10 ] && [ "$KBRIDGE_DELIVERIES" = 1 ]; then echo "first try fails" >&2; exit 1; fi
if [ "$v" = v20 ] && [ ! -e ` + fixedFile + ` ]; then echo "v20 is poison" >&2; exit 7; fi
echo "$KBRIDGE_PARTITION/$KBRIDGE_OFFSET $v $KBRIDGE_KEY" >> ` + dir + `/done.$KBRIDGE_PARTITION`
				handler = []string{"--exec", script}
			case "http":
				l = newLedger(t, 0, func(r *http.Request) int {
					b := r.Header.Get("Kbridge-Key")
					if throttled.Add(1) <= 3 {
						return http.StatusTooManyRequests
					}
					if b == "azIw" { // base64("k20")
						if _, err := os.Stat(fixedFile); err != nil {
							return http.StatusUnprocessableEntity
						}
					}
					if b == "azEw" && r.Header.Get("Kbridge-Deliveries") == "1" { // k10
						return http.StatusInternalServerError
					}
					return 0
				})
				handler = []string{"--http", l.srv.URL}
			}
			env := []string{"KBRIDGE_REDIS_URL=redis://" + p.redisAddr + "/0", "KBRIDGE_PREFIX=" + p.prefix}
			args := append([]string{"worker", "--concurrency", "4", "--max-deliveries", "3", "--backoff-min", "50ms",
				"--backoff-max", "200ms", "--discovery-interval", "200ms", "--visibility-timeout", "3s"}, handler...)
			wp := startProc(t, bin, env, args...)
			count := func() int {
				if l != nil {
					d, _ := l.stats()
					return d
				}
				n := 0
				for i := range 2 {
					b, _ := os.ReadFile(fmt.Sprintf("%s/done.%d", dir, i))
					n += bytes.Count(b, []byte("\n"))
				}
				return n
			}
			testenv.Eventually(t, time.Minute, func() bool { return count() == 59 }, "handled %d of 59", count())
			p.committedAll(t, 30*time.Second)
			out, err := exec.Command(bin, "--redis-url", "redis://"+p.redisAddr+"/0", "--prefix", p.prefix, "dlq", "list", "--topic", p.topic).CombinedOutput()
			if err != nil || !bytes.Contains(out, []byte("max-deliveries")) {
				t.Fatalf("kbridge dlq list: %v\n%s", err, out)
			}
			t.Logf("kbridge dlq list:\n%s", out)
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			if len(lines) != 2 {
				t.Fatalf("want one dead letter, got:\n%s", out)
			}
			ref := strings.Fields(lines[1])[0]
			show, err := exec.Command(bin, "--redis-url", "redis://"+p.redisAddr+"/0", "--prefix", p.prefix, "dlq", "show", ref).CombinedOutput()
			if err != nil || !bytes.Contains(show, []byte("value:        v20")) {
				t.Fatalf("kbridge dlq show %s: %v\n%s", ref, err, show)
			}
			if err := os.WriteFile(fixedFile, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			out, err = exec.Command(bin, "--redis-url", "redis://"+p.redisAddr+"/0", "--prefix", p.prefix, "dlq", "replay", ref).CombinedOutput()
			if err != nil || !bytes.Contains(out, []byte("replayed 1")) {
				t.Fatalf("kbridge dlq replay %s: %v\n%s", ref, err, out)
			}
			testenv.Eventually(t, 30*time.Second, func() bool { return count() == 60 }, "replayed record not completed: %d of 60", count())
			if code := wp.stop(t, syscall.SIGTERM, 30*time.Second); code != 0 {
				t.Errorf("worker exited %d on SIGTERM, want 0", code)
			}
			if n, _ := p.rdb.XLen(context.Background(), wire.DLQKey(p.streams()[0])).Result(); n != 0 {
				t.Errorf("dead letters left: %d", n)
			}
			if l != nil {
				if _, dups := l.stats(); dups != 0 {
					t.Errorf("duplicates = %d, want 0", dups)
				}
			}
		})
	}
}
