package holepunch

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"net/netip"
)

// Magic is the first byte of every punch packet. It is below 0x40 so that
// quic-go hands punch packets to the node's socket demultiplexer rather
// than treating them as QUIC, and it differs from STUN's 0x00/0x01.
const Magic = 0x3a

// Version is the punch packet format version.
const Version = 1

// PacketLen is the length of every punch packet.
const PacketLen = 54

const macLen = 16

// Packet types.
const (
	typePing = 1
	typePong = 2
)

// Roles: which side of an introduction sent a packet. A peer accepts only
// packets of the other role, so its own packets reflected back are useless.
const (
	RoleDialer   = 1
	RoleListener = 2
)

// Named errors for malformed punch packets.
var (
	ErrShortPacket = errors.New("holepunch: packet too short")
	ErrBadVersion  = errors.New("holepunch: unknown packet version")
	ErrBadMAC      = errors.New("holepunch: packet MAC does not verify")
	ErrBadType     = errors.New("holepunch: unknown packet type")
)

// packet is a decoded punch packet. Layout (all integers big-endian):
//
//	0      magic 0x3a
//	1      version (1)
//	2      type: 1 ping, 2 pong
//	3      role of the sender: 1 dialler, 2 listener
//	4..11  attempt ID (from the introduction)
//	12..19 transaction ID (random per ping; a pong echoes it)
//	20..35 observed address (pong only; zero in a ping): IPv6 or v4-mapped
//	36..37 observed port
//	38..53 MAC: HMAC-SHA256 under the attempt's punch key over bytes 0..37,
//	       truncated to 16 bytes
type packet struct {
	typ      byte
	role     byte
	attempt  uint64
	txid     uint64
	observed netip.AddrPort
}

func (p *packet) marshal(key []byte) []byte {
	b := make([]byte, PacketLen)
	b[0], b[1], b[2], b[3] = Magic, Version, p.typ, p.role
	binary.BigEndian.PutUint64(b[4:], p.attempt)
	binary.BigEndian.PutUint64(b[12:], p.txid)
	if p.observed.IsValid() {
		a := p.observed.Addr().As16()
		copy(b[20:36], a[:])
		binary.BigEndian.PutUint16(b[36:], p.observed.Port())
	}
	copy(b[38:], mac(key, b[:38]))
	return b
}

func mac(key, msg []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write(msg)
	return h.Sum(nil)[:macLen]
}

// peekAttempt returns the attempt ID of a packet without checking it, so
// the receiver can find the key to check it with.
func peekAttempt(b []byte) (uint64, error) {
	if len(b) < PacketLen {
		return 0, ErrShortPacket
	}
	if b[1] != Version {
		return 0, ErrBadVersion
	}
	return binary.BigEndian.Uint64(b[4:]), nil
}

func unmarshal(b, key []byte) (*packet, error) {
	if len(b) != PacketLen {
		return nil, ErrShortPacket
	}
	if b[0] != Magic || b[1] != Version {
		return nil, ErrBadVersion
	}
	if !hmac.Equal(mac(key, b[:38]), b[38:]) {
		return nil, ErrBadMAC
	}
	p := &packet{typ: b[2], role: b[3], attempt: binary.BigEndian.Uint64(b[4:]), txid: binary.BigEndian.Uint64(b[12:])}
	if p.typ != typePing && p.typ != typePong {
		return nil, ErrBadType
	}
	var a [16]byte
	copy(a[:], b[20:36])
	if port := binary.BigEndian.Uint16(b[36:]); port != 0 || a != [16]byte{} {
		p.observed = netip.AddrPortFrom(netip.AddrFrom16(a).Unmap(), port)
	}
	return p, nil
}
