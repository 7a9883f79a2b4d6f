//go:build unix

package main

import (
	"os"
	"syscall"
)

// lockKey takes an exclusive lock on path+".lock" for the life of the
// process. It reports false if another process holds it; any other
// failure (a read-only directory) counts as taken: nothing to protect.
func lockKey(path string) bool {
	f, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return true
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return err != syscall.EWOULDBLOCK
	}
	heldLocks = append(heldLocks, f)
	return true
}
