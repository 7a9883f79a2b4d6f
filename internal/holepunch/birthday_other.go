//go:build !unix

package holepunch

import (
	"net"
	"net/netip"
)

// writeTTL sends b without changing the TTL: no primers off Unix.
func writeTTL(c net.PacketConn, b []byte, to netip.AddrPort, _ int) error {
	_, err := c.WriteTo(b, net.UDPAddrFromAddrPort(to))
	return err
}

// fdHeadroom: no birthday sockets where the limit cannot be read.
func fdHeadroom(int) int { return 0 }
