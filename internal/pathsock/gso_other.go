//go:build !linux

package pathsock

import "net/netip"

// WriteSegments sends b to the real address to as datagrams of seg bytes
// each (the last may be shorter), one call per datagram (UDP GSO is
// Linux's).
func (c *Conn) WriteSegments(b []byte, seg int, to netip.AddrPort) error {
	if seg <= 0 || seg >= len(b) {
		_, err := c.WriteToUDPAddrPort(b, to)
		return err
	}
	for off := 0; off < len(b); off += seg {
		if _, err := c.WriteToUDPAddrPort(b[off:min(off+seg, len(b))], to); err != nil {
			return err
		}
	}
	return nil
}
