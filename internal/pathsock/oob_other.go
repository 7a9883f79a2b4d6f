//go:build !linux

package pathsock

// Off Linux quic-go sends no GSO or packet-info options through a wrapped
// socket that this package would have to adjust.
func fixOOB(oob []byte, to4 bool) []byte { return oob }

func segmentSize(oob []byte) int { return 0 }

func hasPktinfo(oob []byte) bool { return false }

func stripPktinfo(oob []byte) []byte { return oob }
