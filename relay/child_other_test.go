//go:build !linux

package relay_test

import "syscall"

// childAttr: no parent-death signal here.
func childAttr() *syscall.SysProcAttr { return nil }
