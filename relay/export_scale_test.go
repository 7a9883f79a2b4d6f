package relay

import (
	"encoding/binary"
	"net/netip"
	"time"
)

// Test-only access for BenchmarkRelayScale's keepalive-only peers
// (farm_light_bench_test.go): once a real link has detached, the farm
// keeps only what the link's keepalive needs and sends the same PINGs
// the link would.

// DetachedKeepalive returns what a detached UDP link's keepalive needs:
// its data token, the relay's address and the period of its PINGs; ok
// is false while l has not detached (or is not a UDP link). The period
// is what a UDPDialer without KeepAlive gives (10 s), or the relay's
// shorter one.
func DetachedKeepalive(l Link) (token uint64, server netip.AddrPort, every time.Duration, ok bool) {
	ll, isLink := l.(*link)
	if !isLink || ll.data == nil || !ll.isDetached.Load() {
		return 0, netip.AddrPort{}, 0, false
	}
	d := ll.data.Load()
	if d == nil {
		return 0, netip.AddrPort{}, 0, false
	}
	every = ll.keepalive
	if every <= 0 || every > 10*time.Second {
		every = 10 * time.Second
	}
	return d.token, d.server, every, true
}

// AppendDetachedPing appends the data packet a detached link with token
// sends as its keepalive: PING with the 8-byte nonce, to the all-zero
// peer key (dataLink.keepalive, sendControl).
func AppendDetachedPing(dst []byte, token uint64, nonce [8]byte) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, dataHeader)...)
	dst[start] = dataToRelay
	binary.BigEndian.PutUint64(dst[start+1:], token)
	return appendFrame(dst, framePing, nonce[:])
}

// IsDetachedPong reports whether b is the relay's answer to a detached
// link's PING (a PONG to the all-zero peer key).
func IsDetachedPong(b []byte) bool {
	if len(b) < dataHeader+frameHeader || b[0] != dataFromRelay {
		return false
	}
	for _, c := range b[1+linkTokenLen : dataHeader] {
		if c != 0 {
			return false
		}
	}
	return b[dataHeader] == framePong
}
