package worker

import (
	"runtime"
	"syscall"
)

// dieWithWorker makes the kernel SIGKILL the command's process (the shell,
// or what it execs into) when the worker dies, even by SIGKILL, when
// nothing in the worker can run any more: each command runs in a process
// group of its own (so that a timeout kills its whole pipeline), so it
// would not die with the worker and would go on doing its side effect
// while its entry is reclaimed and run by another worker.
//
// Linux sends PR_SET_PDEATHSIG when the thread that forked the child ends,
// not the process (go.dev/issue/27505), and the Go runtime ends a thread
// when a goroutine locked to it returns without unlocking — any goroutine,
// in any library. So the goroutine that starts the command stays locked to
// its thread until the command is reaped: no other goroutine runs there,
// and the thread lives as long as the command. The returned func unlocks;
// call it after Wait. (The goroutine is blocked in Wait meanwhile anyway,
// so the lock costs no extra thread.)
func dieWithWorker(a *syscall.SysProcAttr) (unlock func()) {
	a.Pdeathsig = syscall.SIGKILL
	runtime.LockOSThread()
	return runtime.UnlockOSThread
}
