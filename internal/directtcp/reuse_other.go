//go:build !unix

package directtcp

import "syscall"

// reuseControl does nothing where SO_REUSEPORT is not available: the
// listener works, a simultaneous open from its port does not.
func reuseControl(_, _ string, _ syscall.RawConn) error { return nil }
