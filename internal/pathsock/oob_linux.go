//go:build linux

package pathsock

import (
	"encoding/binary"

	"golang.org/x/sys/unix"
)

// fixOOB returns quic-go's control messages for a packet that goes out to
// an IPv4 (to4) or IPv6 destination. quic-go chose them for the peer's
// virtual address (IPv4) and the packet info of the last packet it got, so
// after a move to a path of the other family they may name the wrong one:
// packet info of the wrong family is dropped (the kernel then picks the
// source address by its routes), ECN is carried over to the right option,
// and GSO's segment size is kept. When nothing is wrong, oob itself is
// returned: the common case allocates nothing.
func fixOOB(oob []byte, to4 bool) []byte {
	if len(oob) == 0 || !needsFix(oob, to4) {
		return oob
	}
	out := make([]byte, 0, len(oob))
	rest := oob
	for len(rest) > 0 {
		h, data, r, err := unix.ParseOneSocketControlMessage(rest)
		if err != nil {
			break
		}
		rest = r
		switch {
		case h.Level == unix.SOL_UDP:
			out = appendCmsg(out, h.Level, h.Type, data)
		case isECN(h.Level, h.Type):
			if len(data) > 0 {
				tos := int32(data[0])
				if len(data) >= 4 {
					tos = int32(binary.NativeEndian.Uint32(data))
				}
				if to4 {
					out = appendCmsg(out, unix.IPPROTO_IP, unix.IP_TOS, []byte{byte(tos)})
				} else {
					var b [4]byte
					binary.NativeEndian.PutUint32(b[:], uint32(tos))
					out = appendCmsg(out, unix.IPPROTO_IPV6, unix.IPV6_TCLASS, b[:])
				}
			}
		case (h.Level == unix.IPPROTO_IP) == to4:
			out = appendCmsg(out, h.Level, h.Type, data)
		}
	}
	return out
}

// needsFix reports whether oob holds an option of the other family.
func needsFix(oob []byte, to4 bool) bool {
	for len(oob) > 0 {
		h, _, r, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return false
		}
		oob = r
		if h.Level == unix.IPPROTO_IP && !to4 || h.Level == unix.IPPROTO_IPV6 && to4 {
			return true
		}
	}
	return false
}

func isECN(level, typ int32) bool {
	return level == unix.IPPROTO_IP && typ == unix.IP_TOS || level == unix.IPPROTO_IPV6 && typ == unix.IPV6_TCLASS
}

func appendCmsg(b []byte, level, typ int32, data []byte) []byte {
	start := len(b)
	b = append(b, make([]byte, unix.CmsgSpace(len(data)))...)
	h := (*unix.Cmsghdr)(unsafePointer(&b[start]))
	h.Level = level
	h.Type = typ
	h.SetLen(unix.CmsgLen(len(data)))
	copy(b[start+unix.CmsgLen(0):], data)
	return b
}

// segmentSize returns the GSO segment size in oob, or 0.
func segmentSize(oob []byte) int {
	for len(oob) > 0 {
		h, data, r, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return 0
		}
		oob = r
		if h.Level == unix.SOL_UDP && h.Type == unix.UDP_SEGMENT && len(data) >= 2 {
			return int(binary.NativeEndian.Uint16(data))
		}
	}
	return 0
}

// hasPktinfo reports whether oob names a source address.
func hasPktinfo(oob []byte) bool {
	for len(oob) > 0 {
		h, _, r, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return false
		}
		oob = r
		if h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO || h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_PKTINFO {
			return true
		}
	}
	return false
}

// stripPktinfo returns oob without its packet-info messages (oob itself
// when it has none).
func stripPktinfo(oob []byte) []byte {
	if !hasPktinfo(oob) {
		return oob
	}
	out := make([]byte, 0, len(oob))
	for rest := oob; len(rest) > 0; {
		h, data, r, err := unix.ParseOneSocketControlMessage(rest)
		if err != nil {
			break
		}
		rest = r
		if h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO || h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_PKTINFO {
			continue
		}
		out = appendCmsg(out, h.Level, h.Type, data)
	}
	return out
}
