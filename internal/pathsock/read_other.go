//go:build !linux

package pathsock

import (
	"net/netip"

	"golang.org/x/net/ipv4"
)

// sysReader: no raw reads here (x/net's ReadBatch reads).
type sysReader struct{}

func (c *Conn) sysRead(*sysReader, []ipv4.Message, []netip.AddrPort, int) (int, bool, error) {
	return 0, false, nil
}
