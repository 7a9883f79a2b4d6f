//go:build !linux

package rendezvous

import (
	"net"
	"time"
)

// tcpRTT is not available here: the round trip over TCP stays unknown.
func tcpRTT(net.Conn) func() time.Duration { return nil }
