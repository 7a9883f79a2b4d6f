package sock

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// WriteToTTL sends one packet to to with the given TTL (IPv4) or hop
// limit (IPv6) instead of the system's default, on the node's socket
// itself (so it opens the same NAT mapping as everything else the socket
// sends). The TTL travels with the packet as ancillary data; the socket's
// default is untouched, so QUIC's own packets are not affected.
func (s *Socket) WriteToTTL(b []byte, to netip.AddrPort, ttl int) error {
	if s.ctx.Err() != nil {
		return ErrClosed
	}
	if ttl < 1 || ttl > 255 {
		return fmt.Errorf("sock: TTL %d out of range", ttl)
	}
	dst := s.wire(to)
	oob := make([]byte, unix.CmsgSpace(4))
	h := (*unix.Cmsghdr)(unsafePointer(&oob[0]))
	if to.Addr().Unmap().Is4() {
		// An IPv4 destination, also through a dual-stack socket: the
		// kernel sends it on the IPv4 path, which reads IP_TTL.
		h.Level, h.Type = unix.IPPROTO_IP, unix.IP_TTL
	} else {
		h.Level, h.Type = unix.IPPROTO_IPV6, unix.IPV6_HOPLIMIT
	}
	h.SetLen(unix.CmsgLen(4))
	binary.NativeEndian.PutUint32(oob[unix.CmsgLen(0):], uint32(ttl))
	if _, _, err := s.conn.WriteMsgUDPAddrPort(b, oob, dst); err != nil {
		if s.ctx.Err() != nil {
			return ErrClosed
		}
		return fmt.Errorf("sock: write to %v (ttl %d): %w", to, ttl, err)
	}
	return nil
}
