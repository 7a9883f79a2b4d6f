package rendezvous

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/pathsock"
	"github.com/reachp2p/reach/internal/tcpinfo"
)

// How a client reaches a server: QUIC first, TCP+TLS (or a WebSocket)
// beside it, the upgrade from TCP to QUIC, and the server list.

// dialServer registers with sa: QUIC first; TCP+TLS after UDPHeadStart or
// as soon as QUIC fails. If TCP registers while QUIC is still trying, TCP
// is returned and QUIC, should it succeed, replaces it later: the caller
// must call after (if not nil) once it has installed the connection.
//
// The server keeps the newest registration of a peer ID, so the two
// attempts must not race to it: their handshakes run in parallel, but
// REGISTER goes out on one at a time (regMu), and not at all on TCP once
// QUIC has registered. QUIC therefore always registers last and wins,
// whether it beat TCP or upgrades from it.
func (c *Client) dialServer(ctx context.Context, sa ServerAddr) (cc *clientConn, after func(), err error) {
	if c.cfg.Transport == nil || c.cfg.ForceTCP {
		tctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
		defer cancel()
		cc, err := c.dialTCP(tctx, sa)
		if err != nil {
			return nil, nil, err
		}
		if err := cc.register(tctx); err != nil {
			cc.closeTransport()
			return nil, nil, err
		}
		return cc, nil, nil
	}
	var regMu sync.Mutex
	udpRegistered := false // guarded by regMu
	registerUDP := func(ctx context.Context) (*clientConn, error) {
		cc, err := c.dialQUIC(ctx, sa)
		if err != nil {
			return nil, err
		}
		regMu.Lock()
		defer regMu.Unlock()
		if err := cc.register(ctx); err != nil {
			cc.closeTransport()
			return nil, err
		}
		udpRegistered = true
		return cc, nil
	}
	registerTCP := func(ctx context.Context) (*clientConn, error) {
		cc, err := c.dialTCP(ctx, sa)
		if err != nil {
			return nil, err
		}
		regMu.Lock()
		defer regMu.Unlock()
		if udpRegistered {
			cc.closeTransport()
			return nil, errors.New("QUIC registered first")
		}
		if err := cc.register(ctx); err != nil {
			cc.closeTransport()
			return nil, err
		}
		return cc, nil
	}
	// The QUIC attempt may outlive this call (to upgrade from TCP), so
	// it hangs off the client's lifetime and is cancelled explicitly.
	udpBase, udpCancelCause := context.WithCancelCause(c.ctx)
	udpCtx, udpStop := context.WithTimeoutCause(udpBase, c.cfg.DialTimeout,
		fmt.Errorf("no QUIC answer within %v", c.cfg.DialTimeout))
	udpCancel := func() { udpStop(); udpCancelCause(nil) }
	udp := c.startAttempt(udpCtx, registerUDP)
	if udp == nil {
		udpCancel()
		return nil, nil, ErrClosed
	}
	tcpCtx, tcpCancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	var tcp *attempt
	var udpErr, tcpErr error
	head := time.NewTimer(c.cfg.UDPHeadStart)
	defer head.Stop()
	startTCP := func() {
		if tcp == nil {
			tcp = c.startAttempt(tcpCtx, registerTCP)
		}
	}
	closeIt := func(r dialResult) {
		if r.cc != nil {
			r.cc.close()
		}
	}
	finish := func() { // abandon whatever is still running
		if udp != nil {
			udpCancel()
			udp.fate <- closeIt
		}
		if tcp != nil {
			tcpCancel()
			tcp.fate <- closeIt
		}
	}
	var tcpRes chan dialResult
	for {
		if tcp != nil {
			tcpRes = tcp.res
		}
		var udpRes chan dialResult
		if udp != nil {
			udpRes = udp.res
		}
		select {
		case r := <-udpRes:
			udp = nil
			udpCancel()
			if r.err == nil {
				finish()
				tcpCancel()
				return r.cc, nil, nil
			}
			udpErr = r.err
			if errors.Is(r.err, identity.ErrWrongPeer) || errors.Is(r.err, identity.ErrBadCertificate) {
				finish()
				tcpCancel()
				return nil, nil, r.err
			}
			if tcpErr != nil {
				tcpCancel()
				return nil, nil, fmt.Errorf("udp: %w; tcp: %w", udpErr, tcpErr)
			}
			startTCP()
			if tcp == nil {
				tcpCancel()
				return nil, nil, ErrClosed
			}
		case <-head.C:
			startTCP()
			if tcp == nil {
				finish()
				tcpCancel()
				return nil, nil, ErrClosed
			}
		case r := <-tcpRes:
			tcp, tcpRes = nil, nil
			tcpCancel()
			if r.err == nil {
				if udp == nil {
					return r.cc, nil, nil
				}
				// Keep trying QUIC and move over if it works. Until then,
				// the server replacing TCP with QUIC is no reason to quit.
				tcpCC, pending := r.cc, udp
				c.mu.Lock()
				c.upgradeFrom = tcpCC
				c.mu.Unlock()
				return tcpCC, func() {
					pending.fate <- func(u dialResult) {
						udpCancel()
						c.finishUpgrade(tcpCC, u)
					}
				}, nil
			}
			tcpErr = r.err
			if udp == nil {
				return nil, nil, fmt.Errorf("udp: %w; tcp: %w", udpErr, tcpErr)
			}
			if isRefused(r.err) {
				// Nothing listens on the TCP port: the server is most
				// likely down, so give QUIC only a short grace.
				t := time.AfterFunc(time.Second, func() {
					udpCancelCause(errors.New("no QUIC answer, and TCP refused"))
				})
				defer t.Stop()
			}
		case <-ctx.Done():
			finish()
			tcpCancel()
			return nil, nil, ctx.Err()
		}
	}
}

type dialResult struct {
	cc  *clientConn
	err error
}

// attempt is one dial running in a goroutine. Its outcome goes to res if
// the dialler still listens, or to the function sent on fate otherwise.
type attempt struct {
	res  chan dialResult
	fate chan func(dialResult)
}

func (c *Client) startAttempt(ctx context.Context, dial func(context.Context) (*clientConn, error)) *attempt {
	a := &attempt{res: make(chan dialResult), fate: make(chan func(dialResult), 1)}
	ok := c.spawn(func() {
		cc, err := dial(ctx)
		if err != nil && ctx.Err() != nil {
			err = context.Cause(ctx)
		}
		r := dialResult{cc, err}
		select {
		case a.res <- r:
		case f := <-a.fate:
			f(r)
		}
	})
	if !ok {
		return nil
	}
	return a
}

// finishUpgrade ends the QUIC attempt that outlived a TCP registration
// old: if it succeeded and old is still current, QUIC takes over.
func (c *Client) finishUpgrade(old *clientConn, u dialResult) {
	c.mu.Lock()
	current := c.conn == old && !c.closed
	// On success old stays upgradeFrom until install has made QUIC the
	// registration: the server's "replaced" for old, which the QUIC
	// registration causes, may arrive in between, and must not be taken
	// for another process's (the client stayed offline, registered).
	if c.upgradeFrom == old && (u.err != nil || !current) {
		c.upgradeFrom = nil
	}
	if u.err != nil {
		c.abandoned, c.abandonedAt = old, time.Now()
	}
	c.mu.Unlock()
	if u.err != nil {
		c.log.Debug("staying on TCP: QUIC failed", "server", old.server.String(), "err", u.err)
		if current && old.Err() != nil {
			c.lost(old, ErrServerLost) // the loss lost() ignored meanwhile
		}
		return
	}
	if !current {
		u.cc.close()
		return
	}
	c.log.Info("moving rendezvous registration from TCP to QUIC", "server", u.cc.server.String())
	c.install(u.cc, c.lastIdxOf(u.cc.server))
}

func (c *Client) lastIdxOf(sa ServerAddr) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.indexLocked(sa)
}

// indexLocked is sa's index in c.servers (0 if it is not there).
func (c *Client) indexLocked(sa ServerAddr) int {
	for i, s := range c.servers {
		if s == sa {
			return i
		}
	}
	return 0
}

// serverList is a snapshot of the servers the client knows.
func (c *Client) serverList() []ServerAddr {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.servers)
}

// learnLocked replaces the servers learned from a fleet with those that
// connect strings name (REGISTERED, PONG): after the configured ones and
// current (the server that named them, which does not name itself),
// without repeats, at most MaxFleetServers; a string that does not parse
// is skipped.
func (c *Client) learnLocked(connect []string, current ServerAddr) {
	list := slices.Clone(c.cfg.Servers)
	if !slices.Contains(list, current) {
		list = append(list, current)
	}
	for _, cs := range connect {
		if len(list) >= len(c.cfg.Servers)+MaxFleetServers {
			break
		}
		sa, err := ParseServerAddr(cs)
		if err != nil {
			c.log.Debug("fleet: a server's connect string does not parse", "connect", cs, "err", err)
			continue
		}
		if !slices.Contains(list, sa) {
			list = append(list, sa)
		}
	}
	if !slices.Equal(list, c.servers) {
		c.log.Debug("fleet: servers known", "servers", len(list), "configured", len(c.cfg.Servers))
	}
	c.servers = list
}

func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// resolveUDP lists the server's addresses to dial from the shared socket,
// in the order to try them: those of the socket's family, IPv4 first on a
// dual-stack socket (registering over IPv4 shows the server the node's
// IPv4 mapping, which punching through IPv4 NATs needs).
func (c *Client) resolveUDP(ctx context.Context, sa ServerAddr) ([]netip.AddrPort, error) {
	lookup := c.cfg.lookupNetIP
	if lookup == nil {
		lookup = net.DefaultResolver.LookupNetIP
	}
	ips, err := lookup(ctx, "ip", sa.Host)
	if err != nil {
		return nil, err
	}
	local := addrPortOf(c.cfg.Transport.Conn.LocalAddr()).Addr()
	var v4, v6 []netip.AddrPort
	seen := map[netip.Addr]bool{}
	for _, ip := range ips {
		ip = ip.Unmap()
		switch {
		case seen[ip], local.Is4() && !ip.Is4(), local.Is6() && !local.IsUnspecified() && !ip.Is6():
			continue
		case ip.Is4():
			v4 = append(v4, netip.AddrPortFrom(ip, sa.Port))
		default:
			v6 = append(v6, netip.AddrPortFrom(ip, sa.Port))
		}
		seen[ip] = true
	}
	if len(v4)+len(v6) == 0 {
		return nil, fmt.Errorf("no address of %s suits the local socket %v", sa.Host, local)
	}
	return append(v4, v6...), nil
}

// dialQUIC opens a QUIC connection and its stream to sa; the caller
// registers on it. A name with several addresses is tried address by
// address, within ctx: the next one when a dial fails (at once when the
// host cannot send there at all, as an IPv6-only host to an IPv4
// address).
func (c *Client) dialQUIC(ctx context.Context, sa ServerAddr) (*clientConn, error) {
	addrs, err := c.resolveUDP(ctx, sa)
	if err != nil {
		return nil, err
	}
	tlsCfg, pin, err := identity.ClientTLSConfig(c.cfg.Key, sa.ID, ALPN)
	if err != nil {
		return nil, err
	}
	var qc *quic.Conn
	for i, addr := range addrs {
		qc, err = c.cfg.Transport.Dial(ctx, net.UDPAddrFromAddrPort(addr), tlsCfg, &quic.Config{
			HandshakeIdleTimeout:  c.cfg.DialTimeout,
			MaxIdleTimeout:        time.Minute, // the server's (shorter) one applies
			MaxIncomingStreams:    -1,
			MaxIncomingUniStreams: -1,
		})
		if err == nil {
			break
		}
		if perr := pin.Err(); perr != nil {
			return nil, perr
		}
		if ctx.Err() != nil || i == len(addrs)-1 {
			return nil, err
		}
		c.log.Debug("server address failed; trying the next", "server", sa.String(), "addr", addr, "err", err)
	}
	st, err := qc.OpenStreamSync(ctx)
	if err != nil {
		qc.CloseWithError(quicCodeNoError, "")
		return nil, err
	}
	cc := newClientConn(c, sa, "udp")
	cc.remote = addrPortOf(qc.RemoteAddr())
	cc.paths, _ = c.cfg.Transport.Conn.(*pathsock.Conn)
	cc.rw = st
	cc.setReadDeadline = st.SetReadDeadline
	cc.setWriteDeadline = st.SetWriteDeadline
	cc.rtt = func() time.Duration { return qc.ConnectionStats().SmoothedRTT }
	cc.closeTransport = func() {
		st.Close()
		qc.CloseWithError(quicCodeNoError, "")
	}
	cc.mapErr = func(err error) error {
		var ae *quic.ApplicationError
		if errors.As(err, &ae) && ae.Remote && ae.ErrorMessage != "" {
			return &ProtocolError{Code: ae.ErrorMessage, Reason: "server closed the connection"}
		}
		return err
	}
	return cc, nil
}

// dialTCP opens a TLS connection (over TCP or a WebSocket) to sa; the
// caller registers on it.
func (c *Client) dialTCP(ctx context.Context, sa ServerAddr) (*clientConn, error) {
	tlsCfg, pin, err := identity.ClientTLSConfig(c.cfg.Key, sa.ID, ALPN)
	if err != nil {
		return nil, err
	}
	var raw net.Conn
	if c.cfg.WebSocket {
		raw, err = WebSocketDialer{Key: c.cfg.Key, DialTCP: c.cfg.DialTCP}.Dial(ctx, sa, PathSignal)
	} else {
		raw, err = c.cfg.DialTCP(ctx, "tcp", sa.TCPHostPort())
	}
	if err != nil {
		return nil, err
	}
	tc := tls.Client(raw, tlsCfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		if perr := pin.Err(); perr != nil {
			return nil, perr
		}
		return nil, err
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != ALPN {
		raw.Close()
		return nil, fmt.Errorf("%w: server did not agree to ALPN %s (got %q)", ErrProtocol, ALPN, p)
	}
	cc := newClientConn(c, sa, "tcp")
	cc.rw = tc
	if _, ok := raw.(*net.TCPConn); ok && tcpinfo.Supported {
		cc.rtt = func() time.Duration { return tcpinfo.RTT(raw) }
	}
	cc.setReadDeadline = tc.SetReadDeadline
	cc.setWriteDeadline = tc.SetWriteDeadline
	cc.closeTransport = func() { tc.Close() }
	cc.mapErr = func(err error) error { return err }
	return cc, nil
}
