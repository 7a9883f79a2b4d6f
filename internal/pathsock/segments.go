package pathsock

// sendSegments sends b on a forwarded path: one Send per GSO segment when
// quic-go coalesced several packets into b.
func sendSegments(p Path, b, oob []byte) (int, int, error) {
	seg := segmentSize(oob)
	if seg <= 0 || seg >= len(b) {
		if err := p.Send(b); err != nil {
			return 0, 0, err
		}
		return len(b), len(oob), nil
	}
	for off := 0; off < len(b); off += seg {
		end := min(off+seg, len(b))
		if err := p.Send(b[off:end]); err != nil {
			return off, len(oob), err
		}
	}
	return len(b), len(oob), nil
}
