package rendezvous

import (
	"context"
	"net"

	"github.com/pion/stun/v3"
	"github.com/quic-go/quic-go"
)

// STUN on the server's QUIC socket.

// serveSTUN answers STUN binding requests arriving on the QUIC socket and
// counts and drops every other non-QUIC datagram.
func (s *Server) serveSTUN(ctx context.Context, tr *quic.Transport) {
	buf := make([]byte, 2048)
	for {
		n, from, err := tr.ReadNonQUICPacket(ctx, buf)
		if err != nil {
			return
		}
		s.handleNonQUIC(tr, buf[:n], from)
	}
}

func (s *Server) handleNonQUIC(tr *quic.Transport, pkt []byte, from net.Addr) {
	if resp := s.stunResponse(pkt, from); resp != nil {
		if _, err := tr.WriteTo(resp, from); err != nil {
			s.log.Debug("stun reply", "to", from.String(), "err", err)
		}
	}
}

// stunResponse returns the reply to one datagram on the main port, or nil
// to drop it.
func (s *Server) stunResponse(pkt []byte, from net.Addr) []byte {
	return s.stunReply(pkt, from, s.altPort)
}

// stunReply is stunResponse naming other, when not zero, as the server's
// OTHER-ADDRESS port.
func (s *Server) stunReply(pkt []byte, from net.Addr, other uint16) []byte {
	drop := func(why string) []byte {
		s.nDropped.Add(1)
		s.log.Debug("dropped non-QUIC datagram", "from", from.String(), "len", len(pkt), "why", why)
		return nil
	}
	if !stun.IsMessage(pkt) {
		return drop("not STUN")
	}
	if !s.lim.allowSTUN(sourceOfAddr(from)) {
		return nil // counted in STUNLimited; not logged (a flood)
	}
	req := &stun.Message{Raw: append([]byte(nil), pkt...)}
	if err := req.Decode(); err != nil {
		return drop("malformed STUN: " + err.Error())
	}
	if req.Type != stun.BindingRequest {
		return drop("STUN " + req.Type.String())
	}
	if req.Contains(stun.AttrFingerprint) {
		if err := stun.Fingerprint.Check(req); err != nil {
			return drop("bad STUN fingerprint")
		}
	}
	ap := addrPortOf(from)
	if !ap.IsValid() {
		return drop("no source address")
	}
	setters := []stun.Setter{
		stun.NewTransactionIDSetter(req.TransactionID),
		stun.BindingSuccess,
		&stun.XORMappedAddress{IP: ap.Addr().AsSlice(), Port: int(ap.Port())},
	}
	if other != 0 {
		o := s.otherAddress(ap, other)
		setters = append(setters, &stun.OtherAddress{IP: o.Addr().AsSlice(), Port: int(o.Port())})
	}
	setters = append(setters, stun.NewSoftware("reach"), stun.Fingerprint)
	resp, err := stun.Build(setters...)
	if err != nil {
		return drop("build reply: " + err.Error())
	}
	s.nSTUN.Add(1)
	return resp.Raw
}
