//go:build linux

package pathsock

import (
	"encoding/binary"
	"errors"
	"net/netip"

	"golang.org/x/sys/unix"
)

// WriteSegments sends b to the real address to as datagrams of seg bytes
// each (the last may be shorter), bypassing the peer table like
// WriteToUDPAddrPort: in one system call per up to maxSegments datagrams
// where the kernel segments them (UDP GSO), else one call per datagram.
// A relay sends its data packets this way: through a NAT, a router or a
// veth pair the kernel handles such a batch once, not once per datagram.
func (c *Conn) WriteSegments(b []byte, seg int, to netip.AddrPort) error {
	if seg <= 0 || seg >= len(b) {
		_, err := c.WriteToUDPAddrPort(b, to)
		return err
	}
	if c.v6 && to.Addr().Is4() {
		to = netip.AddrPortFrom(netip.AddrFrom16(to.Addr().As16()), to.Port())
	}
	per := min(maxSegments, maxGSOBytes/seg)
	for len(b) > 0 {
		n := min(len(b), per*seg)
		if err := c.writeGSO(b[:n], seg, to); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// maxSegments and maxGSOBytes bound one GSO send (the kernel's
// UDP_MAX_SEGMENTS on older kernels, and the largest UDP payload).
const (
	maxSegments = 64
	maxGSOBytes = 65507
)

func (c *Conn) writeGSO(b []byte, seg int, to netip.AddrPort) error {
	if seg >= len(b) || c.noGSO.Load() {
		return c.writeEach(b, seg, to)
	}
	var v [2]byte
	binary.NativeEndian.PutUint16(v[:], uint16(seg))
	var space [32]byte
	oob := appendCmsg(space[:0], unix.SOL_UDP, unix.UDP_SEGMENT, v[:])
	_, _, err := c.udp.WriteMsgUDPAddrPort(b, oob, to)
	if err != nil && gsoUnsupported(err) {
		c.noGSO.Store(true)
		return c.writeEach(b, seg, to)
	}
	return err
}

// gsoUnsupported reports whether err says the socket or the route cannot
// segment (no GSO in the kernel, or a device without checksum offload).
func gsoUnsupported(err error) bool {
	return errors.Is(err, unix.EIO) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOPROTOOPT)
}

func (c *Conn) writeEach(b []byte, seg int, to netip.AddrPort) error {
	for off := 0; off < len(b); off += seg {
		if _, err := c.udp.WriteToUDPAddrPort(b[off:min(off+seg, len(b))], to); err != nil {
			return err
		}
	}
	return nil
}
