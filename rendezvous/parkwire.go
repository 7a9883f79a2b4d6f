package rendezvous

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
)

// Parked registrations (docs/protocol.md, "Parked registrations"): once a
// registration over QUIC has been idle for a while, the client asks to
// park it (PARK); the server answers PARKED with a token and a key and
// closes the QUIC connection, keeping only the registration. The node
// then keeps it (and its NAT's mapping) with keepalive datagrams from
// its socket, and the server tells it to come back (WAKE) when it has
// something to deliver.
//
// Both datagrams are parkDatagramLen bytes:
//
//	node → server: 0x2e | token (8) | counter (8) | kind (1 byte) | MAC (16)
//	server → node: 0x2f | token (8) | counter (8) | kind (1 byte) | MAC (16)
//
// MAC is the first 16 bytes of HMAC-SHA256 under the park key of
// parkMACLabel and the datagram's first 18 bytes. Each side's counter
// grows with every datagram it sends; the receiver takes only a counter
// above the last one it took, so a recorded datagram cannot be replayed.
// The first byte is below 0x40 (not QUIC) and is neither STUN's (0x00,
// 0x01), a relay data packet's (0x2c, 0x2d) nor a punch packet's (0x3a).
const (
	parkToServer    = 0x2e
	parkToNode      = 0x2f
	parkDatagramLen = 34
	parkMACLabel    = "reach park"
)

// Kinds of node → server park datagrams.
const (
	parkKeepalive = 0x00 // keeps the registration (and the NAT's mapping)
	parkLeave     = 0x01 // the node closed: forget the registration now
)

// Kinds of server → node park datagrams.
const (
	parkKindPong     = 0x01 // answers a keepalive: the registration is parked here
	parkKindWake     = 0x02 // frames wait for the node: re-attach now
	parkKindReplaced = 0x03 // a registration without this token took over
	parkKindGone     = 0x04 // the server is shutting down: register elsewhere
	// parkKindUnknown answers a keepalive whose token the server does not
	// park (it restarted, or forgot the registration): register again.
	// Not MAC'd (the server has no key for the token): it echoes the
	// keepalive's counter and MAC instead (checkUnknownHint).
	parkKindUnknown = 0x05
)

// errParkDatagram: a park datagram of the wrong size or with a bad MAC.
var errParkDatagram = errors.New("rendezvous: bad park datagram")

// parkMAC computes the MAC of a park datagram's first 18 bytes.
func parkMAC(key *[16]byte, head []byte) [16]byte {
	m := hmac.New(sha256.New, key[:])
	m.Write([]byte(parkMACLabel))
	m.Write(head[:18])
	var sum [32]byte
	var out [16]byte
	copy(out[:], m.Sum(sum[:0]))
	return out
}

// appendParkDatagram encodes one park datagram.
func appendParkDatagram(dst []byte, first byte, token, counter uint64, kind byte, key *[16]byte) []byte {
	start := len(dst)
	dst = append(dst, first)
	dst = binary.BigEndian.AppendUint64(dst, token)
	dst = binary.BigEndian.AppendUint64(dst, counter)
	dst = append(dst, kind)
	mac := parkMAC(key, dst[start:])
	return append(dst, mac[:]...)
}

// parseParkHead returns a park datagram's token without checking it.
func parseParkHead(b []byte) (token uint64, ok bool) {
	if len(b) != parkDatagramLen {
		return 0, false
	}
	return binary.BigEndian.Uint64(b[1:9]), true
}

// openParkDatagram checks a park datagram's MAC under key and returns its
// counter and kind.
func openParkDatagram(b []byte, key *[16]byte) (counter uint64, kind byte, err error) {
	if len(b) != parkDatagramLen {
		return 0, 0, errParkDatagram
	}
	mac := parkMAC(key, b)
	if !hmac.Equal(mac[:], b[18:]) {
		return 0, 0, errParkDatagram
	}
	return binary.BigEndian.Uint64(b[9:17]), b[17], nil
}
