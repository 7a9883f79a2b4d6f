package rendezvous

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/epollpark"
	"github.com/reachp2p/reach/internal/pathsock"
	"github.com/reachp2p/reach/internal/tlstake"
)

// maxPunchKey is the largest PunchKey the server forwards.
const maxPunchKey = 64

// Server is a rendezvous server: registry, introductions and STUN.
// Create it with NewServer and run it with Serve.
type Server struct {
	cfg ServerConfig
	key *identity.Key
	log *slog.Logger
	// fleet holds the other live servers' connect strings
	// (listServers), for REGISTERED.
	fleet    atomic.Pointer[[]string]
	fleetVer atomic.Uint64 // changes with fleet
	tlsCfg   *tls.Config   // QUIC
	tcpTLS   *tls.Config   // TCP ports: tlsCfg plus http/1.1 (WebSocket)
	// proofs are the KeyProofProtocols' in-band ALPNs (TCP ports only).
	proofs map[string]Protocol

	mu      sync.Mutex
	peers   map[identity.PeerID]*session
	seen    map[identity.PeerID]time.Time // when each peer was last registered
	intros  map[uint64]*pendingIntro
	flights map[uint64]*flightPair // by INTRO id, for FlightWindow
	// The alternate STUN socket (StartServer), its port, and the address
	// OTHER-ADDRESS names; set before start.
	alt       *net.UDPConn
	altPort   uint16
	advertise []netip.Addr
	// self are the server's advertised addresses with its ports
	// (StartServer): a fleet server names its relay with them (vouchRelay).
	self      []ServerAddr
	nextIntro uint64
	serving   bool
	instance  string          // the server's ID in its fleet (Registry)
	fleetCtx  context.Context // Serve's, for cross-server introductions
	fleetWG   sync.WaitGroup  // cross-server introductions in flight
	// tcpPark holds the parked readers of TCP registrations; tcpParked
	// counts those parked or woken and still reading (tcppark.go).
	tcpPark   epollpark.Set
	tcpParked sync.WaitGroup
	sn        *snRegistry // volunteers; set by start
	lim       *limits
	codes     *mailbox

	nFleetSent, nFleetServed, nRegistryErrors atomic.Uint64

	nRegistrations, nReplaced, nIntros, nIntrosRefused, nSTUN, nDropped, nProtoErr, nHandshakeFail atomic.Uint64
	nTaken, nTakeKept                                                                              atomic.Uint64

	// pmu guards pk's maps and every parkState (park.go); it is taken
	// after s.mu and a session's qmu, never before.
	pmu sync.Mutex
	pk  parkServer

	outcomes                       outcomeCounts // by label, for the metrics (metrics.go)
	nFlightRelayed, nFlightDropped atomic.Uint64
}

// NewServer checks cfg and makes a Server.
func NewServer(cfg ServerConfig) (*Server, error) {
	cfg = cfg.withDefaults()
	key := cfg.Key
	if key == nil {
		var err error
		if key, err = identity.GenerateKey(); err != nil {
			return nil, err
		}
	}
	alpns := []string{ALPN}
	for p := range cfg.Protocols {
		if p != ALPN {
			alpns = append(alpns, p)
		}
	}
	slices.Sort(alpns[1:])
	tlsCfg, err := identity.ServerTLSConfig(key, alpns...)
	if err != nil {
		return nil, err
	}
	// reach's clients never resume a session: a ticket would only cost
	// each connection its making and the buffers that keep it.
	tlsCfg.SessionTicketsDisabled = true
	tcpTLS, proofProtos := tcpTLSConfig(cfg, tlsCfg, alpns)
	return &Server{
		cfg:    cfg,
		key:    key,
		log:    cfg.Logger,
		tlsCfg: tlsCfg,
		tcpTLS: tcpTLS,
		proofs: proofProtos,
		peers:  make(map[identity.PeerID]*session),
		seen:   make(map[identity.PeerID]time.Time),
		intros: make(map[uint64]*pendingIntro),
		lim:    newLimits(cfg.Limits),
		codes:  newMailbox(cfg.Codes, cfg.Limits.withDefaults().MaxSources),

		instance: newInstanceID(),
	}, nil
}

// ID returns the server's peer ID (the one its connect string pins).
func (s *Server) ID() identity.PeerID { return s.key.ID() }

// Serve runs the server on udp (QUIC signalling and STUN on the same port)
// and tcp (TLS signalling, for networks that block UDP); either may be nil,
// not both. It takes ownership of both and closes them when it returns.
// It returns nil once ctx is cancelled and every connection is closed, or
// the error that stopped a listener. Serve may be called only once.
func (s *Server) Serve(ctx context.Context, udp *net.UDPConn, tcp net.Listener) error {
	wait, err := s.start(ctx, udp, tcp)
	if err != nil {
		return err
	}
	return wait()
}

// start sets up serving (so that no STUN request or QUIC handshake that
// arrives after it returns is lost) and returns the function that waits
// for the end.
func (s *Server) start(ctx context.Context, udp *net.UDPConn, tcp net.Listener, extraTCP ...net.Listener) (wait func() error, err error) {
	if udp == nil && tcp == nil {
		return nil, errors.New("rendezvous: Serve needs a UDP socket or a TCP listener")
	}
	s.mu.Lock()
	if s.serving {
		s.mu.Unlock()
		return nil, errors.New("rendezvous: Serve called twice")
	}
	s.serving = true
	s.mu.Unlock()

	ctx, cancel := context.WithCancelCause(ctx)
	var wg sync.WaitGroup // every goroutine Serve starts, transitively
	if r := s.cfg.Registry; r != nil {
		s.mu.Lock()
		s.fleetCtx = ctx
		s.mu.Unlock()
		wg.Go(func() {
			if err := r.Run(ctx, s.instance, s); err != nil && ctx.Err() == nil {
				s.log.Error("fleet registry stopped", "err", err)
			}
		})
		if sl, ok := r.(ServerLister); ok {
			wg.Go(func() { s.listServers(ctx, sl) })
		}
	}

	var tr *quic.Transport
	if udp != nil {
		// The socket goes through pathsock so that protocols can take
		// their datagrams on quic-go's read loop (DatagramProtocol);
		// pathsock keeps quic-go's batched reads and GSO.
		paths := pathsock.New(udp)
		if !s.cfg.DisableGRO && !paths.EnableGRO() {
			s.log.Debug("rendezvous: UDP GRO not available; reading datagrams one by one")
		}
		for _, name := range slices.Sorted(maps.Keys(s.cfg.Protocols)) {
			if dp, ok := s.cfg.Protocols[name].(DatagramProtocol); ok {
				// Stopped within Serve (wg), not on a goroutine of its own:
				// the protocol's last work (ending its detached links,
				// logging) is over when Serve returns.
				stop := dp.ServeDatagrams(paths)
				wg.Go(func() { <-ctx.Done(); stop() })
			}
		}
		waitPark := s.startParking(ctx, paths)
		wg.Go(func() { <-ctx.Done(); waitPark() })
		tr = &quic.Transport{
			Conn:                paths,
			VerifySourceAddress: s.lim.verifySource,
			ConnContext:         s.lim.connContext,
		}
		// Arm the non-QUIC queue before the socket is read at all:
		// quic-go drops non-QUIC packets until the first call.
		armed, disarm := context.WithCancel(ctx)
		disarm()
		buf := make([]byte, 2048)
		if n, from, err := tr.ReadNonQUICPacket(armed, buf); err == nil {
			s.handleNonQUIC(tr, buf[:n], from)
		}
		qcfg := &quic.Config{
			HandshakeIdleTimeout:           s.cfg.HandshakeTimeout,
			MaxIdleTimeout:                 s.cfg.IdleTimeout,
			MaxIncomingStreams:             1,
			MaxIncomingUniStreams:          -1,
			InitialStreamReceiveWindow:     64 << 10,
			MaxStreamReceiveWindow:         256 << 10,
			InitialConnectionReceiveWindow: 64 << 10,
			MaxConnectionReceiveWindow:     256 << 10,
			EnableDatagrams:                len(s.cfg.Protocols) > 0,
		}
		ln, err := tr.Listen(s.tlsCfg, qcfg)
		if err != nil {
			cancel(nil)
			wg.Wait()
			tr.Close()
			udp.Close()
			if tcp != nil {
				tcp.Close()
			}
			for _, l := range extraTCP {
				l.Close()
			}
			return nil, fmt.Errorf("rendezvous: quic listen: %w", err)
		}
		s.log.Info("rendezvous serving UDP (QUIC + STUN)", "addr", udp.LocalAddr().String(), "id", s.ID().String())
		s.startSupernodes(ctx, udp)
		wg.Go(func() { s.serveSTUN(ctx, tr) })
		if alt := s.alt; alt != nil {
			s.log.Info("rendezvous serving STUN on its alternate port", "addr", alt.LocalAddr().String())
			wg.Go(func() { s.serveAltSTUN(ctx, alt) })
		}
		wg.Go(func() {
			defer ln.Close()
			for {
				conn, err := ln.Accept(ctx)
				if err != nil {
					if ctx.Err() == nil {
						cancel(fmt.Errorf("rendezvous: quic accept: %w", err))
					}
					return
				}
				wg.Go(func() { s.handleQUIC(ctx, conn) })
			}
		})
	}
	tcps := extraTCP
	if tcp != nil {
		tcps = append([]net.Listener{tcp}, extraTCP...)
	}
	for _, tcp := range tcps {
		s.log.Info("rendezvous serving TCP (TLS)", "addr", tcp.Addr().String(), "id", s.ID().String())
		wg.Go(func() {
			for {
				c, err := tcp.Accept()
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					if !errors.Is(err, net.ErrClosed) {
						// Transient (out of file descriptors, aborted
						// connection): back off and keep serving.
						s.log.Warn("tcp accept", "err", err)
						select {
						case <-time.After(50 * time.Millisecond):
						case <-ctx.Done():
						}
						continue
					}
					cancel(fmt.Errorf("rendezvous: tcp accept: %w", err))
					return
				}
				wg.Go(func() { s.handleTCP(ctx, c) })
			}
		})
	}

	return func() error {
		<-ctx.Done()
		for _, tcp := range tcps {
			tcp.Close()
		}
		// Sessions close themselves on ctx (with an ERROR "shutdown"); wait
		// for them before the transport goes, so their last frames get out.
		wg.Wait()
		s.tcpParked.Wait() // sessions whose readers parked close on ctx too
		s.tcpPark.Close()
		for _, pr := range s.cfg.Protocols {
			if w, ok := pr.(LingeringProtocol); ok {
				w.Wait() // their connections that outlived ServeTLS
			}
		}
		s.fleetWG.Wait()
		s.stopSupernodes()
		if tr != nil {
			tr.Close()
			udp.Close()
		}
		s.log.Info("rendezvous stopped")
		err := context.Cause(ctx)
		cancel(nil)
		if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		return nil
	}, nil
}

// handleQUIC runs one QUIC signalling connection: its single bidirectional
// stream carries the frames.
func (s *Server) handleQUIC(ctx context.Context, conn *quic.Conn) {
	handshakeDone(conn)
	if p := conn.ConnectionState().TLS.NegotiatedProtocol; p != ALPN && s.cfg.Protocols[p] != nil {
		s.cfg.Protocols[p].ServeQUIC(ctx, conn)
		return
	}
	id, err := identity.PeerIDFromState(conn.ConnectionState().TLS)
	if err != nil {
		s.nHandshakeFail.Add(1)
		conn.CloseWithError(quicCodeProtocol, codeBadBody)
		return
	}
	actx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	st, err := conn.AcceptStream(actx)
	cancel()
	if err != nil {
		s.nHandshakeFail.Add(1)
		conn.CloseWithError(quicCodeNoError, "")
		return
	}
	remote := func() netip.AddrPort { return addrPortOf(conn.RemoteAddr()) }
	sess := &session{
		srv:      s,
		peer:     id,
		proto:    "udp",
		src:      sourceOfAddr(conn.RemoteAddr()),
		observed: remote,
		rw:       st,
		setReadDeadline: func(t time.Time) error {
			return st.SetReadDeadline(t)
		},
		setWriteDeadline: st.SetWriteDeadline,
		closeConn: func(pe *ProtocolError) {
			st.Close()
			if pe != nil {
				conn.CloseWithError(quicCodeFor(pe), pe.Code)
			} else {
				conn.CloseWithError(quicCodeNoError, "")
			}
		},
		closeParked: func() {
			// The stream's end follows PARKED; the node closes the
			// connection once it read it, or the server does after
			// parkCloseGrace.
			st.Close()
			time.AfterFunc(parkCloseGrace, func() { conn.CloseWithError(quicCodeNoError, "parked") })
		},
	}
	sess.run(ctx)
}

// handleTCP runs one TLS-over-TCP signalling connection.
// A source over its limits is closed at once.
func (s *Server) handleTCP(ctx context.Context, c net.Conn) {
	src := sourceOfAddr(c.RemoteAddr())
	done, ok := s.lim.beginConn(src)
	if !ok {
		s.log.Debug("tcp connection over its source's limits", "remote", c.RemoteAddr().String())
		c.Close()
		return
	}
	s.handleConn(ctx, c, src, done)
}

// handleConn runs one connection of a TCP port from src, or one tunnelled
// in a WebSocket (handshakeDone nil: no WebSocket inside a WebSocket).
// handshakeDone is called once the TLS handshake is over.
func (s *Server) handleConn(ctx context.Context, c net.Conn, src netip.Prefix, handshakeDone func()) {
	web := handshakeDone != nil
	// The hook closes the connection as it came (c is rebound below; a
	// stopping server runs the hook at once, on a goroutine of its own).
	raw := c
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	// The connection may turn out to be a WebSocket's or a TCP
	// registration's (directly or in a WebSocket), whose TLS the server
	// takes over once the handshake is done (tlstake): crypto/tls reads the
	// handshake through a Bounded, which also learns the traffic secrets
	// (tcpTLS's GetConfigForClient).
	bounded := tlstake.NewBounded(c)
	c = bounded
	tc := tls.Server(c, s.tcpTLS)
	hctx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	// The handshake runs on a goroutine of its own, which ends with it:
	// its deep stack (certificate parsing, signatures) would otherwise
	// stay with this one, which serves the connection while it lives
	// (16 KB instead of 8 KB for an idle peer; docs/benchmarks.md).
	hs := make(chan error, 1)
	go func() { hs <- tc.HandshakeContext(hctx) }()
	err := <-hs
	cancel()
	if web {
		handshakeDone()
	}
	if !stop() {
		c.Close()
		return
	}
	if err != nil {
		s.nHandshakeFail.Add(1)
		s.log.Debug("tls handshake failed", "remote", c.RemoteAddr().String(), "err", err)
		c.Close()
		return
	}
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol == alpnHTTP && web {
		s.serveHTTP(ctx, s.take(tc, bounded), src)
		return
	}
	if cs.NegotiatedProtocol != ALPN {
		bounded.Unbound() // crypto/tls keeps the connection
	}
	if pr := s.proofs[cs.NegotiatedProtocol]; pr != nil {
		pr.ServeTLS(ctx, tc) // no client certificate: it proves its key itself
		return
	}
	if p := cs.NegotiatedProtocol; p != ALPN && s.cfg.Protocols[p] != nil {
		s.cfg.Protocols[p].ServeTLS(ctx, tc)
		return
	}
	if cs.NegotiatedProtocol != ALPN {
		s.nHandshakeFail.Add(1)
		s.log.Debug("tls client without ALPN "+ALPN, "remote", c.RemoteAddr().String(), "alpn", cs.NegotiatedProtocol)
		c.Close()
		return
	}
	id, err := identity.PeerIDFromState(cs)
	if err != nil {
		s.nHandshakeFail.Add(1)
		c.Close()
		return
	}
	conn := s.take(tc, bounded)
	sess := &session{
		srv:              s,
		peer:             id,
		proto:            "tcp",
		src:              src,
		observed:         func() netip.AddrPort { return netip.AddrPort{} },
		tcpObserved:      addrPortOf(c.RemoteAddr()),
		rw:               conn,
		parkRaw:          parkRawOf(conn),
		setReadDeadline:  conn.SetReadDeadline,
		setWriteDeadline: conn.SetWriteDeadline,
		closeConn:        func(*ProtocolError) { conn.Close() },
	}
	sess.run(ctx)
}

// take takes tc over from crypto/tls once its handshake is done (a
// WebSocket's outer TLS, a TCP registration's; tlstake), read through
// bounded; when it cannot (not TLS 1.3 with AES-128-GCM), tc goes on.
func (s *Server) take(tc *tls.Conn, bounded *tlstake.Bounded) net.Conn {
	taken, err := tlstake.Take(tc, bounded)
	if err != nil {
		s.nTakeKept.Add(1)
		s.log.Debug("tls stays with crypto/tls", "remote", tc.RemoteAddr().String(), "err", err)
		return tc
	}
	s.nTaken.Add(1)
	return taken
}

// QUIC application error codes on CONNECTION_CLOSE; the reason phrase is
// the ERROR frame's code.
const (
	quicCodeNoError  quic.ApplicationErrorCode = 0
	quicCodeProtocol quic.ApplicationErrorCode = 1
)

func quicCodeFor(pe *ProtocolError) quic.ApplicationErrorCode {
	switch pe.Code {
	case codeReplaced, codeShutdown, codeBusy, codeRateLimited:
		return quicCodeNoError
	}
	return quicCodeProtocol
}

// addrPortOf returns a socket address as an AddrPort with any IPv4-mapped
// IPv6 address unmapped.
func addrPortOf(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.UDPAddr:
		ap = a.AddrPort()
	case *net.TCPAddr:
		ap = a.AddrPort()
	default:
		if a == nil {
			return ap
		}
		ap, _ = netip.ParseAddrPort(a.String())
	}
	return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())
}

var _ io.ReadWriter = (*quic.Stream)(nil)
