package sock

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/pion/stun/v3"
)

// STUN retransmission schedule (RFC 5389 section 7.2.1): the first request
// waits stunRTO, each retransmission doubles the wait, at most stunAttempts
// requests are sent and the last one waits stunLastWait times stunRTO.
const (
	stunRTO      = 500 * time.Millisecond
	stunAttempts = 7
	stunLastWait = 16
)

// STUN sends a binding request to server from this socket and returns this
// socket's address as the server saw it (XOR-MAPPED-ADDRESS, or
// MAPPED-ADDRESS from old servers), never IPv4-mapped. Requests are
// retransmitted RFC 5389 style (500 ms, doubling, seven requests) until a
// response with the same transaction ID arrives, ctx ends, or the attempts
// run out. No response gives an error wrapping ErrSTUNTimeout (and ctx.Err()
// if ctx ended); an error response wraps ErrSTUNResponse; a closed socket
// gives ErrClosed.
func (s *Socket) STUN(ctx context.Context, server netip.AddrPort) (netip.AddrPort, error) {
	b, err := s.STUNBinding(ctx, server)
	return b.Mapped, err
}

// Binding is a STUN binding response.
type Binding struct {
	// Mapped is this socket's address as the server saw it.
	Mapped netip.AddrPort
	// Other is the server's OTHER-ADDRESS (RFC 5780): another address of
	// the server that answers binding requests, to learn whether the
	// NAT's mapping depends on the destination. Invalid when the server
	// named none. (A reach server names a second port of the address
	// asked; its IP may be unspecified.)
	Other netip.AddrPort
}

// STUNBinding is STUN with the whole answer.
func (s *Socket) STUNBinding(ctx context.Context, server netip.AddrPort) (Binding, error) {
	req, err := stun.Build(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	if err != nil {
		return Binding{}, fmt.Errorf("sock: build STUN request: %w", err)
	}
	ch := make(chan []byte, 1)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return Binding{}, ErrClosed
	}
	s.stun[req.TransactionID] = ch
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.stun, req.TransactionID)
		s.mu.Unlock()
	}()

	rto := stunRTO
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for attempt := 1; ; attempt++ {
		if err := s.WriteTo(req.Raw, server); err != nil {
			return Binding{}, err
		}
		wait := rto
		if attempt == stunAttempts {
			wait = stunLastWait * stunRTO
		}
		timer.Reset(wait)
		select {
		case raw := <-ch:
			return parseBinding(raw, server)
		case <-ctx.Done():
			return Binding{}, fmt.Errorf("sock: STUN %v: %w (%w)", server, ErrSTUNTimeout, ctx.Err())
		case <-s.ctx.Done():
			return Binding{}, ErrClosed
		case <-timer.C:
			if attempt == stunAttempts {
				return Binding{}, fmt.Errorf("sock: STUN %v: %w after %d requests", server, ErrSTUNTimeout, attempt)
			}
			s.log.Debug("sock: STUN retransmit", "server", server, "attempt", attempt+1)
			rto *= 2
		}
	}
}

func parseBindingResponse(raw []byte, server netip.AddrPort) (netip.AddrPort, error) {
	b, err := parseBinding(raw, server)
	return b.Mapped, err
}

// parseBinding parses a binding response: the mapped address as
// parseBindingResponse, and OTHER-ADDRESS if present and well formed.
func parseBinding(raw []byte, server netip.AddrPort) (Binding, error) {
	mapped, err := parseMapped(raw, server)
	if err != nil {
		return Binding{}, err
	}
	b := Binding{Mapped: mapped}
	m := &stun.Message{Raw: raw}
	if m.Decode() == nil {
		var o stun.OtherAddress
		if o.GetFrom(m) == nil && o.Port > 0 && o.Port <= 0xffff {
			if ip, ok := netip.AddrFromSlice(o.IP); ok {
				b.Other = netip.AddrPortFrom(ip.Unmap(), uint16(o.Port))
			}
		}
	}
	return b, nil
}

func parseMapped(raw []byte, server netip.AddrPort) (netip.AddrPort, error) {
	m := &stun.Message{Raw: raw}
	if err := m.Decode(); err != nil {
		return netip.AddrPort{}, fmt.Errorf("sock: STUN %v: %w: %v", server, ErrSTUNResponse, err)
	}
	if m.Type.Class == stun.ClassErrorResponse {
		var code stun.ErrorCodeAttribute
		if err := code.GetFrom(m); err == nil {
			return netip.AddrPort{}, fmt.Errorf("sock: STUN %v: %w: error %d %s", server, ErrSTUNResponse, code.Code, code.Reason)
		}
		return netip.AddrPort{}, fmt.Errorf("sock: STUN %v: %w: error response", server, ErrSTUNResponse)
	}
	var ip []byte
	var port int
	var xor stun.XORMappedAddress
	if err := xor.GetFrom(m); err == nil {
		ip, port = xor.IP, xor.Port
	} else {
		var mapped stun.MappedAddress
		if err := mapped.GetFrom(m); err != nil {
			return netip.AddrPort{}, fmt.Errorf("sock: STUN %v: %w: no mapped address", server, ErrSTUNResponse)
		}
		ip, port = mapped.IP, mapped.Port
	}
	addr, ok := netip.AddrFromSlice(ip)
	if !ok || port <= 0 || port > 0xffff {
		return netip.AddrPort{}, fmt.Errorf("sock: STUN %v: %w: malformed mapped address", server, ErrSTUNResponse)
	}
	return netip.AddrPortFrom(addr.Unmap(), uint16(port)), nil
}

// stunResponse hands pkt to the STUN call waiting for its transaction ID and
// reports whether it did. It runs on the read goroutine.
func (s *Socket) stunResponse(pkt []byte) bool {
	if !stun.IsMessage(pkt) {
		return false
	}
	// The C1 class bit (0x0100 of the message type) is set in success and
	// error responses, clear in requests and indications.
	if pkt[0]&0x01 == 0 || len(pkt) < 20 {
		return false
	}
	var id [stun.TransactionIDSize]byte
	copy(id[:], pkt[8:20])
	s.mu.Lock()
	ch, ok := s.stun[id]
	s.mu.Unlock()
	if !ok {
		return false
	}
	select {
	case ch <- append([]byte(nil), pkt...):
	default: // a duplicate response; the first one is enough
	}
	return true
}

// STUNConn is STUN on a plain packet connection that is not a Socket (a
// short-lived helper socket): one binding request to server, retransmitted
// on the same schedule, answered by the first response with its
// transaction ID; other packets are ignored. It sets and clears c's read
// deadline and must be c's only reader meanwhile. No response gives an
// error wrapping ErrSTUNTimeout.
func STUNConn(ctx context.Context, c net.PacketConn, server netip.AddrPort) (netip.AddrPort, error) {
	req, err := stun.Build(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("sock: build STUN request: %w", err)
	}
	defer c.SetReadDeadline(time.Time{})
	to := net.UDPAddrFromAddrPort(server)
	buf := make([]byte, 1500)
	rto := stunRTO
	for attempt := 1; attempt <= stunAttempts; attempt++ {
		if _, err := c.WriteTo(req.Raw, to); err != nil {
			return netip.AddrPort{}, fmt.Errorf("sock: STUN %v: %w", server, err)
		}
		wait := rto
		if attempt == stunAttempts {
			wait = stunLastWait * stunRTO
		}
		deadline := time.Now().Add(wait)
		clamped := false // the wait ends with ctx
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline, clamped = d, true
		}
		c.SetReadDeadline(deadline)
		for {
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				break // deadline: retransmit (or give up)
			}
			pkt := buf[:n]
			if !stun.IsMessage(pkt) || n < 20 || string(pkt[8:20]) != string(req.TransactionID[:]) {
				continue
			}
			return parseMapped(pkt, server)
		}
		if clamped {
			<-ctx.Done() // due now: the read deadline can beat ctx's timer
		}
		if ctx.Err() != nil {
			return netip.AddrPort{}, fmt.Errorf("sock: STUN %v: %w (%w)", server, ErrSTUNTimeout, ctx.Err())
		}
		rto *= 2
	}
	return netip.AddrPort{}, fmt.Errorf("sock: STUN %v: %w after %d requests", server, ErrSTUNTimeout, stunAttempts)
}
