package main

import (
	"log/slog"
	"syscall"
	"testing"
	"time"
)

// TestSignalContextSecondSignal: the first SIGTERM cancels the context; the
// second calls the force-exit hook (the worker kills its --exec commands
// there) before exiting with status 130.
func TestSignalContextSecondSignal(t *testing.T) {
	exited := make(chan int, 1)
	hooked := make(chan struct{})
	exit = func(code int) { exited <- code }
	t.Cleanup(func() { exit = osExit })
	ctx, stop := signalContext(slog.New(slog.DiscardHandler), func() { close(hooked) })
	defer stop()
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("first SIGTERM did not cancel the context")
	}
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-exited:
		select {
		case <-hooked:
		default:
			t.Error("exited without calling the force-exit hook first")
		}
		if code != 130 {
			t.Errorf("exit code %d, want 130", code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("second SIGTERM did not exit")
	}
}
