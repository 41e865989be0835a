//go:build !linux

package worker

import "syscall"

// dieWithWorker does nothing outside Linux (no PR_SET_PDEATHSIG): a command
// outlives a worker killed with SIGKILL there; KillAll covers the other
// ways a worker exits at once.
func dieWithWorker(*syscall.SysProcAttr) (unlock func()) { return func() {} }
