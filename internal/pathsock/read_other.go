//go:build !linux

package pathsock

import "golang.org/x/net/ipv4"

// sysReader: no raw reads here (x/net's ReadBatch reads).
type sysReader struct{}

func (c *Conn) sysRead(*reader, []ipv4.Message, int) (int, bool, error) { return 0, false, nil }
