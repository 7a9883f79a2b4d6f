package rendezvous

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/pathsock"
	"github.com/reachp2p/reach/internal/tcpinfo"
)

// clientConn is one registration with one server over QUIC or TLS.
type clientConn struct {
	c                *Client
	server           ServerAddr
	proto            string // "udp" or "tcp"
	rw               io.ReadWriter
	fr               *frameReader
	setReadDeadline  func(time.Time) error
	setWriteDeadline func(time.Time) error
	closeTransport   func()
	mapErr           func(error) error // turns transport errors into ours

	observed  netip.AddrPort
	remote    netip.AddrPort // the server's UDP address (QUIC only)
	keepalive time.Duration
	fleet     []string             // REGISTERED: the other live servers of the fleet
	inFleet   bool                 // REGISTERED: the server is in a fleet (fleet is its list, maybe empty)
	relearned chan struct{}        // a PONG changed the servers known: pingLoop re-arms
	parkedCh  chan struct{}        // closed when the registration parked: pingLoop ends
	protocols []string             // REGISTERED's: the server's other ALPN protocols
	codes     bool                 // REGISTERED's: the server keeps a short-code mailbox
	rtt       func() time.Duration // nil: unknown (TCP)

	wmu sync.Mutex // serialises writes
	// Parking (parkclient.go). parking (PARK sent, no answer yet) and
	// park are guarded by wmu; writes wait on wcond while parking.
	paths     *pathsock.Conn // the node's socket, if it can take park datagrams
	parkAfter time.Duration  // idle time before PARK; zero: never
	active    atomic.Int64   // UnixNano of the last frame but PING/PONG either way
	parking   bool
	parkStuck bool // PARK went unanswered (parkAnswerTimeout): not again on this connection
	park      *clientPark
	wcond     *sync.Cond
	resume    uint64 // REGISTER's: the parked registration this one takes over

	mu      sync.Mutex
	pending map[uint64]chan result // nil once failed
	flights map[flightKey]*Flight
	err     error
	done    chan struct{}
}

type result struct {
	body resultBody
	code *codeResultBody // a CODE_RESULT's
	err  error
}

const writeTimeout = 10 * time.Second

func newClientConn(c *Client, sa ServerAddr, proto string) *clientConn {
	cc := &clientConn{c: c, server: sa, proto: proto, pending: make(map[uint64]chan result), done: make(chan struct{}),
		relearned: make(chan struct{}, 1), parkedCh: make(chan struct{})}
	cc.wcond = sync.NewCond(&cc.wmu)
	cc.active.Store(time.Now().UnixNano())
	return cc
}

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

// register sends REGISTER and waits for REGISTERED.
func (cc *clientConn) register(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() {
		cc.setReadDeadline(time.Now())
		cc.setWriteDeadline(time.Now())
	})
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		cc.setReadDeadline(dl)
		cc.setWriteDeadline(dl)
	}
	b, _ := appendFrame(nil, typeRegister, registerBody{Agent: "reach", Resume: cc.resume})
	if _, err := cc.rw.Write(b); err != nil {
		return cc.mapErr(err)
	}
	cc.fr = newFrameReader(cc.rw, maxFrameBody)
	for {
		t, body, err := cc.fr.next()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return cc.mapErr(err)
		}
		switch t {
		case typeRegistered:
			var rb registeredBody
			if err := decodeBody(t, body, &rb); err != nil {
				return err
			}
			if rb.Peer != cc.c.cfg.Key.ID() {
				return &ProtocolError{Code: codeBadBody, Reason: "server registered a different peer ID"}
			}
			cc.observed = netip.AddrPortFrom(rb.Observed.Addr().Unmap(), rb.Observed.Port())
			cc.protocols = rb.Protocols
			cc.fleet, cc.inFleet = rb.Servers, rb.Fleet
			cc.codes = rb.Codes
			if pa := cc.c.cfg.ParkAfter; rb.ParkAfterMS > 0 && pa >= 0 {
				cc.parkAfter = max(pa, time.Duration(rb.ParkAfterMS)*time.Millisecond)
			}
			cc.keepalive = max(time.Duration(rb.KeepaliveMS)*time.Millisecond, 100*time.Millisecond)
			if rb.KeepaliveMS == 0 {
				cc.keepalive = 10 * time.Second
			}
			cc.setReadDeadline(time.Time{})
			cc.setWriteDeadline(time.Time{})
			return nil
		case typeError:
			var eb errorBody
			decodeBody(t, body, &eb)
			return &ProtocolError{Code: eb.Code, Reason: eb.Reason}
		case typePing, typePong:
		default:
			return &ProtocolError{Code: codeUnexpected, Reason: t.String() + " before REGISTERED"}
		}
	}
}

// readLoop handles frames from the server until the connection dies.
func (cc *clientConn) readLoop() {
	err := cc.readFrames()
	cc.wmu.Lock()
	cc.parking = false // writers waiting for PARKED see the outcome
	cc.wcond.Broadcast()
	cc.wmu.Unlock()
	if errors.Is(err, errConnParked) {
		cc.runParked()
		return
	}
	cc.fail(err)
	cc.c.lost(cc, err)
}

func (cc *clientConn) readFrames() error {
	for {
		cc.setReadDeadline(time.Now().Add(cc.silentFor()))
		t, body, err := cc.fr.next()
		if err != nil {
			if e := cc.Err(); e != nil {
				return e
			}
			var pe *ProtocolError
			if errors.As(err, &pe) {
				cc.writeFrame(typeError, errorBody{Code: pe.Code, Reason: pe.Reason}, false)
			}
			return cc.mapErr(err)
		}
		if t != typePing && t != typePong && t != typeParked {
			cc.active.Store(time.Now().UnixNano())
		}
		switch t {
		case typeParked:
			var pb parkedBody
			if err := decodeBody(t, body, &pb); err != nil {
				return err
			}
			if err := cc.parked(pb); err != nil {
				return err
			}
		case typeResult:
			var rb resultBody
			if err := decodeBody(t, body, &rb); err != nil {
				return err
			}
			cc.deliver(rb)
		case typeCodeResult:
			var rb codeResultBody
			if err := decodeBody(t, body, &rb); err != nil {
				return err
			}
			cc.deliverResult(rb.ID, result{code: &rb})
		case typeIntro:
			var ib introBody
			if err := decodeBody(t, body, &ib); err != nil {
				return err
			}
			in := &Introduction{Offer: ib.Offer, cc: cc, id: ib.ID, flight: NewFlight()}
			in.flight.arm(cc, flightKey{intro: true, id: ib.ID})
			select {
			case cc.c.incoming <- in:
			default:
				cc.c.log.Warn("incoming queue full; rejecting introduction", "from", ib.Offer.Peer.Short())
				in.flight.Close()
				cc.writeFrame(typeReject, rejectBody{ID: ib.ID, Reason: "busy"}, false)
			}
		case typeFlight:
			var fb flightBody
			if err := decodeBody(t, body, &fb); err != nil {
				return err
			}
			cc.flightFrame(fb)
		case typeVolunteered:
			var vb volunteeredBody
			if err := decodeBody(t, body, &vb); err != nil {
				return err
			}
			cc.c.volunteered(cc, vb)
		case typePing:
			var p pingBody
			decodeBody(t, body, &p)
			cc.writeFrame(typePong, p, false)
		case typePong:
			var p pingBody
			if err := decodeBody(t, body, &p); err != nil {
				return err
			}
			if p.Fleet {
				cc.c.mu.Lock()
				if cc.c.conn == cc {
					cc.c.learnLocked(p.Servers, cc.server)
					cc.c.lastIdx = cc.c.indexLocked(cc.server)
				}
				cc.c.mu.Unlock()
				select {
				case cc.relearned <- struct{}{}:
				default:
				}
			}
		case typeError:
			var eb errorBody
			decodeBody(t, body, &eb)
			return &ProtocolError{Code: eb.Code, Reason: eb.Reason}
		default:
			return &ProtocolError{Code: codeUnexpected, Reason: t.String() + " is not sent by servers"}
		}
	}
}

// silentFor is how long the server may stay silent before the
// connection is taken for dead (ClientConfig.Liveness).
func (cc *clientConn) silentFor() time.Duration {
	l := cc.c.cfg.Liveness
	if l == 0 && len(cc.c.serverList()) > 1 {
		l = DefaultFleetLiveness
	}
	if l > 0 {
		return max(min(l, 3*cc.keepalive), minLiveness)
	}
	return 3 * cc.keepalive
}

// minLiveness is the least silence taken for a dead server.
const minLiveness = 300 * time.Millisecond

// pingLoop pings every third of silentFor, which it reads again for each
// ping: a client that learns a second server pings more often from then
// on.
func (cc *clientConn) pingLoop() {
	t := time.NewTimer(cc.silentFor() / 3)
	defer t.Stop()
	// parkT fires when the registration may have been idle for parkAfter
	// (parkclient.go); never without an offer to park.
	parkT := time.NewTimer(time.Hour)
	defer parkT.Stop()
	parkT.Stop()
	armPark := func() {
		if cc.parkAfter > 0 {
			idle := time.Since(time.Unix(0, cc.active.Load()))
			parkT.Reset(max(cc.parkAfter-idle, 10*time.Millisecond))
		}
	}
	armPark()
	var seq uint64
	for {
		select {
		case <-parkT.C:
			if cc.parkEligible() {
				cc.tryPark()
				parkT.Reset(cc.parkAfter) // if refused or lost: not before
			} else {
				armPark()
			}
		case <-cc.parkedCh:
			return
		case <-t.C:
			seq++
			if cc.write(typePing, pingBody{Seq: seq}) != nil {
				return
			}
			t.Reset(cc.silentFor() / 3)
		case <-cc.relearned:
			// The servers known changed (a PONG): the next ping comes
			// within the new interval.
			t.Reset(cc.silentFor() / 3)
		case <-cc.done:
			return
		}
	}
}

// write sends one frame; a failure kills the connection. While PARK
// awaits its answer it waits; on a parked registration it fails with
// errConnParked (and ErrServerLost).
func (cc *clientConn) write(t msgType, body any) error { return cc.writeFrame(t, body, true) }

// writeFrame is write; the reader's own writes do not wait for PARKED
// (wait false): the reader is what takes it.
func (cc *clientConn) writeFrame(t msgType, body any, wait bool) error {
	b, err := appendFrame(nil, t, body)
	if err != nil {
		return err
	}
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	for wait && cc.parking {
		cc.wcond.Wait()
	}
	if cc.park != nil {
		return fmt.Errorf("%w: %w", ErrServerLost, errConnParked)
	}
	if err := cc.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrServerLost, err)
	}
	if t != typePing && t != typePong {
		cc.active.Store(time.Now().UnixNano())
	}
	cc.setWriteDeadline(time.Now().Add(writeTimeout))
	if _, err := cc.rw.Write(b); err != nil {
		err = cc.mapErr(err)
		cc.fail(err)
		return fmt.Errorf("%w: %w", ErrServerLost, err)
	}
	return nil
}

// fail closes the connection (once) and fails pending requests.
func (cc *clientConn) fail(err error) {
	cc.mu.Lock()
	if cc.pending == nil {
		cc.mu.Unlock()
		return
	}
	if err == nil {
		err = io.EOF
	}
	pending := cc.pending
	cc.pending = nil
	cc.err = err
	close(cc.done)
	cc.mu.Unlock()
	cc.closeTransport()
	lost := err
	if !errors.Is(err, ErrClosed) && !errors.Is(err, ErrReplaced) {
		lost = fmt.Errorf("%w: %w", ErrServerLost, err)
	}
	for _, ch := range pending {
		ch <- result{err: lost}
	}
}

// close shuts a connection that was never installed.
func (cc *clientConn) close() { cc.fail(ErrClosed) }

// Err returns why the connection failed, or nil while it is up.
func (cc *clientConn) Err() error {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.err
}

func (cc *clientConn) expect(id uint64) chan result {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.pending == nil {
		return nil
	}
	ch := make(chan result, 1)
	cc.pending[id] = ch
	return ch
}

func (cc *clientConn) unexpect(id uint64) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	delete(cc.pending, id)
}

func (cc *clientConn) deliver(rb resultBody) { cc.deliverResult(rb.ID, result{body: rb}) }

func (cc *clientConn) deliverResult(id uint64, r result) {
	cc.mu.Lock()
	ch := cc.pending[id]
	delete(cc.pending, id)
	cc.mu.Unlock()
	if ch != nil {
		ch <- r
	}
}

// Introduction is another peer's request to connect, from Incoming.
type Introduction struct {
	// Offer is the dialler's offer; Offer.Peer is its authenticated ID.
	Offer    PeerInfo
	cc       *clientConn
	id       uint64
	flight   *Flight
	answered atomic.Bool
}

// Accept sends answer to the dialler. The client appends its Candidates();
// a zero Attempt and a nil PunchKey are filled from the offer. It returns
// ErrAnswered on a second call, or an error wrapping ErrServerLost if the
// connection the introduction came on is gone.
func (in *Introduction) Accept(answer PeerInfo) error {
	if !in.answered.CompareAndSwap(false, true) {
		return ErrAnswered
	}
	answer.Candidates = in.cc.c.withCandidates(answer.Candidates)
	if answer.Attempt == 0 {
		answer.Attempt = in.Offer.Attempt
	}
	if answer.PunchKey == nil {
		answer.PunchKey = in.Offer.PunchKey
	}
	return in.cc.write(typeAnswer, answerBody{ID: in.id, Answer: answer})
}

// Reject refuses the introduction; the dialler's Connect returns a
// *ConnectError with ErrRejected and reason (at most 256 bytes are kept).
func (in *Introduction) Reject(reason string) error {
	if !in.answered.CompareAndSwap(false, true) {
		return ErrAnswered
	}
	return in.cc.write(typeReject, rejectBody{ID: in.id, Reason: reason})
}
