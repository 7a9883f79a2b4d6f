package rendezvous

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
)

// RunningServer is a Server started by StartServer.
type RunningServer struct {
	*Server
	addrs  []ServerAddr // what it advertises; the first is ServerAddr
	udp    netip.AddrPort
	tcp    netip.AddrPort
	tls    netip.AddrPort // cfg.TLSPort's listener, if bound
	alt    netip.AddrPort // the alternate STUN port, if bound
	cancel context.CancelFunc
	done   chan struct{}
	err    error
	once   sync.Once
}

// StartServer listens on UDP and TCP at listen and serves there until
// Close. The two ports are the same number; port 0 picks a free one. An
// invalid (zero) listen address means all interfaces, port DefaultPort.
// The connect string names cfg.PublicAddrs if any, else listen's IP, or
// for an unspecified IP the host's first global unicast address (see
// AdvertiseAddr). ctx bounds only the setup.
func StartServer(ctx context.Context, cfg ServerConfig, listen netip.AddrPort) (*RunningServer, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if !listen.IsValid() {
		listen = netip.AddrPortFrom(netip.IPv6Unspecified(), DefaultPort)
	}
	srv, err := NewServer(cfg)
	if err != nil {
		return nil, err
	}
	udp, tcp, err := listenPair(listen)
	if err != nil {
		return nil, err
	}
	rs := &RunningServer{
		Server: srv,
		udp:    addrPortOf(udp.LocalAddr()),
		tcp:    addrPortOf(tcp.Addr()),
		done:   make(chan struct{}),
	}
	for _, pa := range cfg.PublicAddrs {
		port := pa.Port()
		if port == 0 {
			port = rs.udp.Port()
		}
		ip := pa.Addr().Unmap()
		rs.addrs = append(rs.addrs, ServerAddr{ID: srv.ID(), Host: ip.String(), Port: port})
		srv.advertise = append(srv.advertise, ip)
	}
	if len(rs.addrs) == 0 {
		ip := AdvertiseAddr(listen.Addr())
		rs.addrs = []ServerAddr{{ID: srv.ID(), Host: ip.String(), Port: rs.udp.Port()}}
		srv.advertise = []netip.Addr{ip}
	}
	if alt, err := listenAltSTUN(cfg, listen, rs.udp.Port()); err != nil {
		srv.log.Warn("rendezvous: alternate STUN port not bound; clients need two servers to see a symmetric NAT", "err", err)
	} else if alt != nil {
		srv.alt, srv.altPort = alt, addrPortOf(alt.LocalAddr()).Port()
		rs.alt = addrPortOf(alt.LocalAddr())
	}
	var extra []net.Listener
	if p := cfg.TLSPort; p != 0 && p != rs.tcp.Port() {
		tcpNet := "tcp6"
		if ip := listen.Addr(); ip.Is4() || ip.Is4In6() {
			tcpNet = "tcp4"
		} else if ip.IsUnspecified() {
			tcpNet = "tcp"
		}
		host := ""
		if !listen.Addr().IsUnspecified() {
			host = listen.Addr().Unmap().String()
		}
		if l, err := net.Listen(tcpNet, net.JoinHostPort(host, strconv.Itoa(int(p)))); err != nil {
			srv.log.Warn("rendezvous: TLS port not bound; clients use the main TCP port", "port", p, "err", err)
		} else {
			extra = append(extra, l)
			rs.tls = addrPortOf(l.Addr())
			for i := range rs.addrs {
				rs.addrs[i].TCPPort = p
			}
		}
	}
	srv.self = slices.Clone(rs.addrs)
	sctx, cancel := context.WithCancel(context.Background())
	rs.cancel = cancel
	wait, err := srv.start(sctx, udp, tcp, extra...)
	if err != nil {
		cancel()
		if srv.alt != nil {
			srv.alt.Close()
		}
		return nil, err
	}
	go func() {
		defer close(rs.done)
		rs.err = wait()
	}()
	return rs, nil
}

// listenPair opens a UDP socket and a TCP listener on the same port. The
// unspecified IPv6 address (::) listens dual-stack.
func listenPair(listen netip.AddrPort) (*net.UDPConn, net.Listener, error) {
	ip := listen.Addr()
	udpNet, tcpNet, host := "udp6", "tcp6", ip.String()
	switch {
	case ip.Is4() || ip.Is4In6():
		udpNet, tcpNet, host = "udp4", "tcp4", ip.Unmap().String()
	case ip.IsUnspecified():
		udpNet, tcpNet, host = "udp", "tcp", ""
	}
	var lastErr error
	for range 20 { // with port 0, the TCP side of the picked port may be taken
		pc, err := net.ListenPacket(udpNet, net.JoinHostPort(host, strconv.Itoa(int(listen.Port()))))
		if err != nil {
			return nil, nil, fmt.Errorf("rendezvous: listen udp %v: %w", listen, err)
		}
		udp := pc.(*net.UDPConn)
		port := addrPortOf(udp.LocalAddr()).Port()
		tcp, err := net.Listen(tcpNet, net.JoinHostPort(host, strconv.Itoa(int(port))))
		if err == nil {
			return udp, tcp, nil
		}
		udp.Close()
		lastErr = err
		if listen.Port() != 0 {
			break
		}
	}
	return nil, nil, fmt.Errorf("rendezvous: listen tcp %v: %w", listen, lastErr)
}

// AdvertiseAddr returns the address a server listening on ip should put in
// its connect string: ip itself, or for an unspecified ip the first
// non-loopback global unicast address of the host's interfaces (IPv4 only
// for 0.0.0.0; IPv4 preferred for ::), or 127.0.0.1 if there is none.
func AdvertiseAddr(ip netip.Addr) netip.Addr {
	if ip.IsValid() && !ip.IsUnspecified() {
		return ip.Unmap()
	}
	var v6 netip.Addr
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		pfx, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		cand := pfx.Addr().Unmap()
		if cand.IsLoopback() || !cand.IsGlobalUnicast() {
			continue
		}
		if cand.Is4() {
			return cand
		}
		if !v6.IsValid() && (!ip.IsValid() || ip.Is6()) {
			v6 = cand
		}
	}
	if v6.IsValid() {
		return v6
	}
	return netip.AddrFrom4([4]byte{127, 0, 0, 1})
}

// ServerAddr returns the server's address and key: the first it
// advertises.
func (rs *RunningServer) ServerAddr() ServerAddr { return rs.addrs[0] }

// ConnectString returns the connect string clients need: the first of
// ConnectStrings.
func (rs *RunningServer) ConnectString() string { return rs.addrs[0].String() }

// ConnectStrings returns a connect string for every address the server
// advertises (ServerConfig.PublicAddrs, in order), or the one it guessed.
func (rs *RunningServer) ConnectStrings() []string {
	out := make([]string, len(rs.addrs))
	for i, a := range rs.addrs {
		out[i] = a.String()
	}
	return out
}

// UDPAddr returns the bound UDP address.
func (rs *RunningServer) UDPAddr() netip.AddrPort { return rs.udp }

// TCPAddr returns the bound TCP address.
func (rs *RunningServer) TCPAddr() netip.AddrPort { return rs.tcp }

// TLSAddr returns the address bound for ServerConfig.TLSPort, or the zero
// value if there is none.
func (rs *RunningServer) TLSAddr() netip.AddrPort { return rs.tls }

// AltSTUNAddr returns the address of the alternate STUN port
// (ServerConfig.AltSTUNPort), or the zero value if there is none.
func (rs *RunningServer) AltSTUNAddr() netip.AddrPort { return rs.alt }

// Done is closed when the server has stopped.
func (rs *RunningServer) Done() <-chan struct{} { return rs.done }

// Close stops the server, closes every connection (clients get an ERROR
// "shutdown") and waits. It returns the error that stopped the server
// early, if any.
func (rs *RunningServer) Close() error {
	rs.once.Do(rs.cancel)
	<-rs.done
	if errors.Is(rs.err, context.Canceled) {
		return nil
	}
	return rs.err
}
