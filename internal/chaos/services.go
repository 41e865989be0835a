package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// Kafka is a single-node Kafka broker of the harness, run by
// scripts/kafka.sh. It has two client listeners: PLAINTEXT on Port, which the
// harness itself uses (producer, offsets), and PROXIED on Port+2, which
// advertises ProxyAddr — the Proxy in front of it — so that every connection
// kbridge makes, after the bootstrap too, goes through the proxy.
type Kafka struct {
	Scripts   string    // the repository's scripts/ directory
	Port      int       // PLAINTEXT listener; the controller is on Port+1
	ProxyAddr string    // advertised address of the PROXIED listener
	Dir       string    // data directory (kafka.log is there)
	Out       io.Writer // output of the scripts; nil discards it
}

// Addr is the direct listener, for the harness.
func (k *Kafka) Addr() string { return "127.0.0.1:" + strconv.Itoa(k.Port) }

// ProxiedAddr is the listener behind the proxy.
func (k *Kafka) ProxiedAddr() string { return "127.0.0.1:" + strconv.Itoa(k.Port+2) }

// Start starts the broker (fresh: on wiped data) and waits until it answers.
func (k *Kafka) Start(ctx context.Context, fresh bool) error {
	proxied := k.ProxiedAddr()
	props := strings.Join([]string{
		fmt.Sprintf("listeners=PLAINTEXT://%s,CONTROLLER://127.0.0.1:%d,PROXIED://%s", k.Addr(), k.Port+1, proxied),
		fmt.Sprintf("advertised.listeners=PLAINTEXT://%s,PROXIED://%s", k.Addr(), k.ProxyAddr),
		"listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,PROXIED:PLAINTEXT",
	}, "\n")
	env := []string{
		"KAFKA_PORT=" + strconv.Itoa(k.Port),
		"KAFKA_CONTROLLER_PORT=" + strconv.Itoa(k.Port+1),
		"KAFKA_DATA_DIR=" + k.Dir,
		"KAFKA_EXTRA_PROPS=" + props,
		"KAFKA_HEAP_OPTS=-Xms256m -Xmx512m",
	}
	if fresh {
		env = append(env, "KAFKA_FRESH=1")
	}
	return runScript(ctx, k.Out, filepath.Join(k.Scripts, "kafka.sh"), "start", env)
}

// Stop stops the broker cleanly (SIGTERM; kafka.sh waits for it).
func (k *Kafka) Stop(ctx context.Context) error {
	return runScript(ctx, k.Out, filepath.Join(k.Scripts, "kafka.sh"), "stop", []string{
		"KAFKA_PORT=" + strconv.Itoa(k.Port), "KAFKA_DATA_DIR=" + k.Dir,
	})
}

// Kill SIGKILLs the broker, as a crash would, and waits until it is gone.
func (k *Kafka) Kill() error {
	return killPidFile(filepath.Join(k.Dir, "kafka.pid"), "kafka.Kafka")
}

// Redis is a redis-server of the harness, run by scripts/redis.sh without
// automatic persistence: the harness decides when a snapshot is taken (Save)
// and whether a restart loads one (RestartEmpty, RestartSaved,
// RestartFromSnapshot).
type Redis struct {
	Scripts string
	Port    int
	Dir     string
	Out     io.Writer
}

// Addr is the server's address.
func (r *Redis) Addr() string { return "127.0.0.1:" + strconv.Itoa(r.Port) }

func (r *Redis) env() []string {
	return []string{"REDIS_PORT=" + strconv.Itoa(r.Port), "REDIS_DATA_DIR=" + r.Dir, "REDIS_PERSIST=none"}
}

// Start starts the server; it loads dump.rdb from Dir if there is one.
func (r *Redis) Start(ctx context.Context) error {
	return runScript(ctx, r.Out, filepath.Join(r.Scripts, "redis.sh"), "start", r.env())
}

// Stop stops the server without saving (the harness's clean-up).
func (r *Redis) Stop(ctx context.Context) error {
	return runScript(ctx, r.Out, filepath.Join(r.Scripts, "redis.sh"), "stop", r.env())
}

func (r *Redis) client() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: r.Addr(), MaxRetries: -1, DialTimeout: 2 * time.Second})
}

// Save takes a snapshot now (SAVE): a later RestartFromSnapshot goes back
// to this moment.
func (r *Redis) Save(ctx context.Context) error {
	c := r.client()
	defer c.Close()
	return c.Save(ctx).Err()
}

// shutdown stops the server, saving first or not, and waits until it is gone.
func (r *Redis) shutdown(ctx context.Context, save bool) error {
	c := r.client()
	defer c.Close()
	var err error
	if save {
		err = c.ShutdownSave(ctx).Err()
	} else {
		err = c.ShutdownNoSave(ctx).Err()
	}
	// The server closes the connection: an error that says so is success.
	if err != nil && !isClosedConn(err) {
		return fmt.Errorf("redis shutdown: %w", err)
	}
	return waitPortClosed(ctx, r.Addr())
}

// RestartEmpty crashes the server and starts it on no data: every stream,
// group and dead letter is gone.
func (r *Redis) RestartEmpty(ctx context.Context, down time.Duration) error {
	if err := r.shutdown(ctx, false); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(r.Dir, "dump.rdb")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	sleepCtx(ctx, down)
	return r.Start(ctx)
}

// RestartSaved saves, stops and starts the server: nothing is lost but what
// was in flight while it was down.
func (r *Redis) RestartSaved(ctx context.Context, down time.Duration) error {
	if err := r.shutdown(ctx, true); err != nil {
		return err
	}
	sleepCtx(ctx, down)
	return r.Start(ctx)
}

// RestartFromSnapshot crashes the server and starts it on the last Save:
// everything written since is gone (appends, acks, groups' progress), the
// way a failover to a lagging replica or a restore from backup would.
func (r *Redis) RestartFromSnapshot(ctx context.Context, down time.Duration) error {
	if err := r.shutdown(ctx, false); err != nil {
		return err
	}
	sleepCtx(ctx, down)
	return r.Start(ctx)
}

// runScript runs a service script with extra environment.
func runScript(ctx context.Context, out io.Writer, script, verb string, env []string) error {
	cmd := exec.CommandContext(ctx, "bash", script, verb)
	cmd.Env = append(os.Environ(), env...)
	if out == nil {
		out = io.Discard
	}
	var buf strings.Builder
	// One writer for both: exec then writes from one goroutine at a time.
	w := io.MultiWriter(out, &buf)
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Run(); err != nil {
		tail := buf.String()
		if len(tail) > 2000 {
			tail = tail[len(tail)-2000:]
		}
		return fmt.Errorf("%s %s: %w\n%s", filepath.Base(script), verb, err, tail)
	}
	return nil
}

// killPidFile SIGKILLs the process in pidFile (if its command line has want)
// and waits until it is gone.
func killPidFile(pidFile, want string) error {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("%s: %w", pidFile, err)
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !strings.Contains(string(cmdline), want) {
		return fmt.Errorf("pid %d of %s is not %s", pid, pidFile, want)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if !pidAlive(pid) {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("pid %d still alive 30s after SIGKILL", pid)
}

// pidAlive reports whether pid runs (a zombie counts as gone).
func pidAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}

func waitPortClosed(ctx context.Context, addr string) error {
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			return nil
		}
		c.Close()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func isClosedConn(err error) bool {
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	return strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "EOF")
}

func sleepCtx(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
