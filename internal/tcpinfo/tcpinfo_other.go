//go:build !linux

package tcpinfo

import (
	"net"
	"time"
)

// RTT is not available here: always zero.
func RTT(net.Conn) time.Duration { return 0 }

// Supported reports whether RTT can say anything on this system.
const Supported = false
