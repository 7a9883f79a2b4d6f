package pathsock

// Deliver hands quic-go a packet that a forwarded path received from the
// peer called name (its Key name), as Inject does. A peer without a
// virtual address gets one only for a QUIC Initial (the start of a
// session); other packets from unknown peers are dropped. When the peer
// has no forwarded path, or only a handshake-only one, fwd() becomes its
// forwarded path: replies go back the way the packet came.
func (c *Conn) Deliver(name string, pkt []byte, fwd func() Path) error {
	key, ok := c.Lookup(name)
	if !ok {
		if !IsInitial(pkt) {
			return ErrUnknownPeer
		}
		var err error
		if key, err = c.Key(name); err != nil {
			return err
		}
	}
	if _, cur, err := c.Current(key); err == nil && (cur == nil || isHandshakeOnly(cur)) {
		c.SetFallback(key, fwd())
	}
	return c.Inject(key, pkt)
}

// IsInitial reports whether pkt is a QUIC long-header Initial packet
// (RFC 9000 §17.2: header form and fixed bits set, type 0; version 1 or
// 2, whose Initial type differs).
func IsInitial(pkt []byte) bool {
	if len(pkt) < 5 || pkt[0]&0xc0 != 0xc0 {
		return false
	}
	typ := pkt[0] >> 4 & 3
	switch version := uint32(pkt[1])<<24 | uint32(pkt[2])<<16 | uint32(pkt[3])<<8 | uint32(pkt[4]); version {
	case 1:
		return typ == 0
	case 0x6b3343cf: // QUIC v2 (RFC 9369)
		return typ == 1
	default:
		return false
	}
}

// IsHandshakeOnly reports whether p carries handshakes only (HandshakeOnly).
func IsHandshakeOnly(p Path) bool { return isHandshakeOnly(p) }
