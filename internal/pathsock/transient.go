package pathsock

import (
	"errors"
	"syscall"
)

// transient reports whether a send failed because of the network's state
// at this moment (no route, interface down or without the address, no
// buffer space), which passes, rather than because of the socket.
func transient(err error) bool {
	for _, e := range []syscall.Errno{syscall.ENETUNREACH, syscall.EHOSTUNREACH, syscall.ENETDOWN, syscall.EHOSTDOWN, syscall.EADDRNOTAVAIL, syscall.ENOBUFS} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// addrGone reports whether a send failed because the local address it
// named is no longer the host's.
func addrGone(err error) bool {
	return errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.EINVAL)
}
