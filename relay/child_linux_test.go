package relay_test

import "syscall"

// childAttr makes a benchmark's child process die with it (it would hold
// the benchmark lock's descriptor, inherited from flock).
func childAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} }
