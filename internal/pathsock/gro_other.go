//go:build !linux

package pathsock

// msgTrunc: no raw reads here, so no flags to look at.
const msgTrunc = 0

// EnableGRO reports false: UDP GRO is Linux's.
func (c *Conn) EnableGRO() bool { return false }

func splitGRO(oob []byte) (seg, nn int) { return 0, len(oob) }
