package rendezvous

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strconv"
)

// A second UDP port that answers STUN binding requests only (RFC 5780's
// OTHER-ADDRESS names it in every binding response from the main port):
// a client that asks both ports from one socket learns whether its NAT
// maps it to a new public port per destination (a symmetric NAT) with one
// server, and how the NAT picks ports. See ServerConfig.AltSTUNPort.

// listenAltSTUN opens the alternate STUN socket next to the main one
// (listen: the main listen address; port: the main port actually bound).
func listenAltSTUN(cfg ServerConfig, listen netip.AddrPort, port uint16) (*net.UDPConn, error) {
	if cfg.DisableAltSTUN {
		return nil, nil
	}
	alt := cfg.AltSTUNPort
	if alt == 0 && listen.Port() != 0 {
		if port == 0xffff {
			return nil, errors.New("no port after 65535")
		}
		alt = port + 1
	}
	ip := listen.Addr()
	network, host := "udp6", ip.String()
	switch {
	case ip.Is4() || ip.Is4In6():
		network, host = "udp4", ip.Unmap().String()
	case ip.IsUnspecified():
		network, host = "udp", ""
	}
	pc, err := net.ListenPacket(network, net.JoinHostPort(host, strconv.Itoa(int(alt))))
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}

// serveAltSTUN answers binding requests on the alternate port until ctx
// ends. Its answers name no OTHER-ADDRESS: a client learns the port from
// the main one.
func (s *Server) serveAltSTUN(ctx context.Context, pc *net.UDPConn) {
	stop := context.AfterFunc(ctx, func() { pc.Close() })
	defer stop()
	defer pc.Close()
	buf := make([]byte, 2048)
	for {
		n, from, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			var ne net.Error
			if ctx.Err() == nil && errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		if resp := s.stunReply(buf[:n], net.UDPAddrFromAddrPort(from), 0); resp != nil {
			pc.WriteToUDPAddrPort(resp, from)
		}
	}
}

// otherAddress is the OTHER-ADDRESS for a request from from: the first
// advertised address of the request's family, else the
// unspecified address of that family (a client uses the port with the
// address it asked).
func (s *Server) otherAddress(from netip.AddrPort, port uint16) netip.AddrPort {
	for _, a := range s.advertise {
		if a.Is4() == from.Addr().Is4() {
			return netip.AddrPortFrom(a, port)
		}
	}
	if from.Addr().Is4() {
		return netip.AddrPortFrom(netip.IPv4Unspecified(), port)
	}
	return netip.AddrPortFrom(netip.IPv6Unspecified(), port)
}
