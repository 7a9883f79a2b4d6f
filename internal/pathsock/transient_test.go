package pathsock

import (
	"net"
	"os"
	"syscall"
	"testing"
)

// TestTransient: the send errors of a network in transition are dropped
// packets, a closed socket is not.
func TestTransient(t *testing.T) {
	wrap := func(e syscall.Errno) error {
		return &net.OpError{Op: "write", Net: "udp", Err: os.NewSyscallError("sendmsg", e)}
	}
	for _, e := range []syscall.Errno{syscall.ENETUNREACH, syscall.EHOSTUNREACH, syscall.ENETDOWN, syscall.EADDRNOTAVAIL} {
		if !transient(wrap(e)) {
			t.Errorf("%v: not transient", e)
		}
	}
	for _, err := range []error{wrap(syscall.EBADF), wrap(syscall.EMSGSIZE), net.ErrClosed} {
		if transient(err) {
			t.Errorf("%v: transient", err)
		}
	}
}
