package relay

import (
	"context"
	"crypto/rand"
	"errors"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
)

// quicLink is the QUIC connection of a UDP link on the server, while the
// link has one: a detached link (docs/protocol.md, "Detached links") has
// none, and keeps no reference to what quic-go held for it.
type quicLink struct {
	qc  *quic.Conn
	st  *quic.Stream
	wmu sync.Mutex
}

// writeCtl writes one frame on the control stream.
func (q *quicLink) writeCtl(b []byte) error {
	q.wmu.Lock()
	defer q.wmu.Unlock()
	q.st.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := q.st.Write(b)
	return err
}

// ServeQUIC serves one QUIC connection that negotiated ALPN; it returns
// when the link ends or detaches (then the link lives on as data
// packets). The connection must have datagrams enabled.
func (s *Server) ServeQUIC(ctx context.Context, qc *quic.Conn) {
	id, err := identity.PeerIDFromState(qc.ConnectionState().TLS)
	if err != nil || !qc.ConnectionState().SupportsDatagrams.Remote {
		qc.CloseWithError(codeProtocol, "protocol")
		return
	}
	ip := addrOf(qc.RemoteAddr())
	actx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	st, err := qc.AcceptStream(actx)
	cancel()
	if err != nil {
		qc.CloseWithError(codeProtocol, "protocol")
		return
	}
	q := &quicLink{qc: qc, st: st}
	p := &peerLink{srv: s, id: id, ip: ip, ipk: ipKey(ip), transport: transportUDP, linkedAt: time.Now()}
	p.q.Store(q)
	p.fail = p.failUDP
	p.write = p.writeUDP
	st.SetReadDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	if sock := s.sock.Load(); sock != nil {
		p.data = linkData{token: newLinkToken(), sock: *sock}
		rand.Read(p.data.key[:])
		a := addrPortOf(qc.RemoteAddr())
		p.data.addr.Store(&a)
		p.writeBatch = p.writeDataBatch
	}
	if !s.hello(ctx, p, st) {
		return
	}
	defer func() {
		if p.q.Load() != nil {
			s.unregister(p)
		}
	}()
	go s.readQUICControl(p, q)
	p.startWriter(ctx)
	for {
		d, err := qc.ReceiveDatagram(ctx)
		if err != nil {
			if ctx.Err() != nil && p.q.Load() != nil {
				p.fail(codeShutdown, "server shutting down")
			}
			return
		}
		if len(d) < identityLen {
			s.m.drop(dropMalformed)
			continue
		}
		s.forward(p, identity.PeerID(d[:identityLen]), d[identityLen:])
	}
}

// readQUICControl reads a QUIC link's control stream: pings, consent,
// packets too large for a datagram, and DETACH.
func (s *Server) readQUICControl(p *peerLink, q *quicLink) {
	var buf []byte
	for {
		q.st.SetReadDeadline(time.Time{})
		typ, body, b, err := readFrame(q.st, buf)
		buf = b
		if err != nil {
			return
		}
		switch {
		case typ == framePing:
			p.enqueuePong(body)
		case typ == framePacket && len(body) >= identityLen:
			// A packet too large for a datagram (see protocol.md).
			s.forward(p, identity.PeerID(body[:identityLen]), body[identityLen:])
		case typ == frameAllow && s.allow(p, body):
		case typ == frameDetach && len(body) == 0 && p.data.token != 0 && !s.cfg.QUICLinks:
			// Frames the node wrote before it heard the answer (an
			// ALLOW) are still read, until the connection closes.
			s.detach(p, q)
		default:
			s.log.Debug("relay: unexpected frame on QUIC control stream", "peer", p.id.Short(), "type", typ)
			p.fail(codeProtocol, "unexpected frame")
			return
		}
	}
}

// detachGrace is how long the relay waits for a node that asked to
// detach to close the link's QUIC connection before closing it itself.
const detachGrace = 3 * time.Second

// detach makes p a detached link: its QUIC connection goes (the node
// closes it on DETACH's answer; the relay after detachGrace at the
// latest), and the link lives on as data packets, its control frames in
// data packets too (docs/protocol.md, "Detached links").
func (s *Server) detach(p *peerLink, q *quicLink) {
	a := addrPortOf(q.qc.RemoteAddr())
	p.data.addr.Store(&a)
	p.data.dataOn.Store(true)
	p.data.seen.Store(true)
	// Detached before the answer goes: the node closes the QUIC
	// connection when it hears it, and ServeQUIC, which then returns,
	// must find the link detached (else it ends the link).
	p.qmu.Lock()
	if p.closed { // ended meanwhile
		p.qmu.Unlock()
		return
	}
	p.q.Store(nil)
	p.data.detached.Store(true)
	s.m.detached.Add(1)
	p.qmu.Unlock()
	if err := q.writeCtl(appendFrame(nil, frameDetach)); err != nil {
		q.qc.CloseWithError(0, "")
		p.fail(0, "") // detached: unregisters it
		return
	}
	time.AfterFunc(detachGrace, func() { q.qc.CloseWithError(0, "detached") })
	s.log.Debug("relay: link detached", "peer", p.id.Short(), "addr", a)
}

// writeUDP sends one queued message on a UDP link: a packet as a QUIC
// datagram (or on the control stream when too large for one), a control
// frame on the control stream; once detached, control frames as data
// packets (a packet too large for one is dropped: relayed sessions send
// none).
func (p *peerLink) writeUDP(buf []byte) error {
	q := p.q.Load()
	if q == nil {
		if buf[0] != framePacket {
			p.sendControl(buf)
		} else {
			p.srv.m.drop(dropMalformed)
		}
		return nil
	}
	if buf[0] != framePacket {
		return q.writeCtl(buf)
	}
	err := q.qc.SendDatagram(buf[frameHeader:])
	var tooLarge *quic.DatagramTooLargeError
	if errors.As(err, &tooLarge) {
		// Too large for a datagram on this link: the control stream
		// carries it as a PACKET frame.
		n := len(buf) - frameHeader
		buf[1], buf[2] = byte(n>>8), byte(n)
		return q.writeCtl(buf)
	}
	return err
}

// failUDP ends a UDP link, after an ERROR with code if it is not 0.
func (p *peerLink) failUDP(code byte, reason string) {
	q := p.q.Load()
	if q == nil { // detached
		if code != 0 {
			p.sendControl(appendFrame(nil, frameError, []byte{code}, []byte(reason)))
		}
		p.srv.unregister(p)
		return
	}
	if code != 0 {
		q.writeCtl(appendFrame(nil, frameError, []byte{code}, []byte(reason)))
	}
	q.st.Close()
	q.qc.CloseWithError(quic.ApplicationErrorCode(code), codeName(code))
}
