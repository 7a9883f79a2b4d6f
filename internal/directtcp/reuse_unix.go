//go:build unix

package directtcp

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// reuseControl sets SO_REUSEADDR and SO_REUSEPORT on a TCP socket before
// it binds: the listener and the connections a simultaneous open makes
// from its port (holepunch-tcp, next) must share the port, which Linux
// allows only when every socket on it has SO_REUSEPORT (and the same
// user). SO_REUSEADDR lets the port be bound again while old connections
// from it linger in TIME_WAIT.
func reuseControl(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); serr != nil {
			return
		}
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	})
	if err != nil {
		return err
	}
	return serr
}
