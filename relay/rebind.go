package relay

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"net/netip"
	"sync"
	"time"
)

// A detached link whose node's address changed (its NAT rebound the
// mapping, the node moved networks) would otherwise be heard from only on
// a new link, after its pings went unanswered for ~15 s. Instead the relay
// validates the new address, as QUIC validates a path (RFC 9000 §8.2):
// a data packet with the link's token from another address gets a
// CHALLENGE there (a fresh nonce, at most one a second per link, no larger
// than the packet that caused it), and the link moves when the answer
// comes from that address: RESPONSE with the nonce and a MAC of the token
// and nonce under the link key, which WELCOME handed the node inside the
// QUIC connection and which never travels in clear. Knowing a token (it is
// visible on the path) is not enough to pull a link elsewhere.
const (
	linkKeyLen = 16
	macLen     = 16
	// challengeEvery bounds the challenges one link's token can cause.
	challengeEvery = time.Second
)

// moveState is a detached link's outstanding challenge.
type moveState struct {
	mu    sync.Mutex
	nonce [8]byte
	to    netip.AddrPort // where the challenge went
	at    time.Time
}

// moveMAC is the RESPONSE's MAC of nonce for the link with token and key.
func moveMAC(key []byte, token uint64, nonce []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("reach relay move"))
	m.Write(binary.BigEndian.AppendUint64(nil, token))
	m.Write(nonce)
	return m.Sum(nil)[:macLen]
}

// moveTo handles a data packet b with p's token from from, which is not
// p's address: it moves p there if b answers p's challenge to from, or
// challenges from (at most every challengeEvery). It reports whether the
// packet was the answer.
func (s *Server) moveTo(p *peerLink, b []byte, from netip.AddrPort) bool {
	f := b[dataHeader:]
	if identityOf(b) == zeroPeer && len(f) == frameHeader+8+macLen && f[0] == frameResponse &&
		int(f[1])<<8|int(f[2]) == 8+macLen {
		body := f[frameHeader:]
		mv := &p.data.mv
		mv.mu.Lock()
		ok := mv.to == from && !mv.at.IsZero() && hmac.Equal(body[:8], mv.nonce[:]) &&
			hmac.Equal(body[8:], moveMAC(p.data.key[:], p.data.token, mv.nonce[:]))
		if ok {
			mv.at, mv.to = time.Time{}, netip.AddrPort{}
		}
		mv.mu.Unlock()
		if ok {
			old := p.data.addr.Load()
			p.data.addr.Store(&from)
			p.data.seen.Store(true)
			s.m.moved.Add(1)
			s.log.Debug("relay: detached link moved", "peer", p.id.Short(), "from", old, "to", from)
			return true
		}
		return false
	}
	const challengeLen = dataHeader + frameHeader + 8
	if len(b) < challengeLen {
		return false // no answer larger than the packet
	}
	mv := &p.data.mv
	now := time.Now()
	mv.mu.Lock()
	if now.Sub(mv.at) < challengeEvery {
		mv.mu.Unlock()
		return false
	}
	rand.Read(mv.nonce[:])
	mv.to, mv.at = from, now
	c := make([]byte, dataHeader, challengeLen)
	c[0] = dataFromRelay
	binary.BigEndian.PutUint64(c[1:], p.data.token)
	c = appendFrame(c, frameChallenge, mv.nonce[:])
	mv.mu.Unlock()
	p.data.sock.WriteToUDPAddrPort(c, from)
	return false
}

// zeroPeer is the all-zero peer key of probes and control frames.
var zeroPeer [identityLen]byte

// identityOf is the peer key of data packet b.
func identityOf(b []byte) [identityLen]byte {
	return [identityLen]byte(b[1+linkTokenLen : dataHeader])
}
