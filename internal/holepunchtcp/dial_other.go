//go:build !linux

package holepunchtcp

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"time"
)

var errUnsupported = errors.New("holepunch-tcp: not supported on this system")

func dialFrom(context.Context, func(func() error) error, netip.AddrPort, netip.AddrPort, int, func()) (net.Conn, error) {
	return nil, errUnsupported
}

func taken(error) bool   { return false }
func refused(error) bool { return false }
func expired(error) bool { return false }

func measureHop(context.Context, func(func() error) error, netip.AddrPort, int, time.Duration) (time.Duration, bool, netip.Addr) {
	return 0, false, netip.Addr{}
}
