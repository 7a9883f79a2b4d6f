//go:build !linux

package relay

import (
	"crypto/tls"
	"syscall"
	"time"
)

// watcher parks no TLS link off Linux: each keeps its read loop.
type watcher struct{ srv *Server }

func parkable(*tls.Conn) syscall.RawConn { return nil }

func (*watcher) park(*peerLink, time.Time) parkResult { return parkFailed }
func (*watcher) remove(*tlsConn) bool                 { return false }
func (*watcher) expire(*tlsConn, time.Time) bool      { return false }
