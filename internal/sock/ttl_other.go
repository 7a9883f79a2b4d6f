//go:build !linux

package sock

import (
	"errors"
	"net/netip"
)

// ErrTTLUnsupported: this platform cannot set a packet's TTL here.
var ErrTTLUnsupported = errors.New("sock: per-packet TTL not supported on this platform")

// WriteToTTL is not supported off Linux: it returns ErrTTLUnsupported.
func (s *Socket) WriteToTTL(b []byte, to netip.AddrPort, ttl int) error {
	return ErrTTLUnsupported
}
