package pathsock

// SegmentPath is a Path that can send several packets of one size at once
// (quic-go's GSO batches).
type SegmentPath interface {
	Path
	// SendSegments sends b, packets of seg bytes each (the last may be
	// shorter). It must not keep b.
	SendSegments(b []byte, seg int) error
}

// sendSegments sends b on a forwarded path: one Send per GSO segment when
// quic-go coalesced several packets into b, unless the path takes them
// at once (SegmentPath).
func sendSegments(p Path, b, oob []byte) (int, int, error) {
	seg := segmentSize(oob)
	if sp, ok := p.(SegmentPath); ok && seg > 0 && seg < len(b) {
		if err := sp.SendSegments(b, seg); err != nil {
			return 0, 0, err
		}
		return len(b), len(oob), nil
	}
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
