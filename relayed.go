package reach

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/strategy"
	"github.com/reachp2p/reach/stream"
)

// StrategyRelay is the last rung: a hosted relay forwards the session's
// (encrypted) packets.
const StrategyRelay = relay.Name

// Defaults of the relay's Config fields.
const (
	// DefaultRelayDelay is how long after a dial starts the relay joins
	// the race when the rungs before it are still trying.
	DefaultRelayDelay = time.Second
	// blockedRelayDelay replaces it when one side's UDP looks blocked
	// (it registered over TCP): then only a LAN path could beat the relay.
	blockedRelayDelay = 250 * time.Millisecond
	// adaptiveSlack is added to twice the introduction's duration to make
	// the default relay delay (see relayDelay).
	adaptiveSlack = 150 * time.Millisecond
	// adaptiveFloor is the least the adaptive delay waits, so that a busy
	// machine's slow hole punch is not overtaken on a fast path.
	adaptiveFloor = 400 * time.Millisecond
	// DefaultUpgradeInterval is the first pause between background
	// attempts to replace a relayed session by a better path.
	DefaultUpgradeInterval = 30 * time.Second
	maxUpgradeInterval     = 10 * time.Minute
	// upgradeTimeout bounds one background attempt.
	upgradeTimeout = 20 * time.Second
)

// PathEventKind says what happened to a peer's path.
type PathEventKind string

// Path events.
const (
	// PathRelayed: a session to the peer now runs through the relay.
	PathRelayed PathEventKind = "relayed"
	// PathUpgradeAttempt: the node is trying the better rungs again in the
	// background while the relayed session carries on.
	PathUpgradeAttempt PathEventKind = "upgrade-attempt"
	// PathUpgradeFailed: that attempt found nothing better (Err says why).
	PathUpgradeFailed PathEventKind = "upgrade-failed"
	// PathUpgraded: a better path was found: Session is a new session on
	// it (Strategy names its rung), which new streams (Dial, DialSession)
	// use from now on. Streams already open stay on the relayed session
	// until they end; moving them (QUIC connection migration) is future
	// work, see docs/architecture.md.
	PathUpgraded PathEventKind = "upgraded"
)

// PathEvent reports what the node does about a peer's path.
type PathEvent struct {
	Peer     identity.PeerID
	Kind     PathEventKind
	Strategy string          // the rung of Session
	Session  *stream.Session // PathRelayed, PathUpgraded
	Err      error           // PathUpgradeFailed
}

// relayState is a node's relay side: its link to the relay server and the
// second QUIC transport that runs on the link's virtual packet connection.
type relayState struct {
	client *relay.Client
	tr     *quic.Transport
	ln     *stream.Listener
}

// relaySessionConfig is cfg for sessions on the relayed transport.
func relaySessionConfig(cfg stream.Config) stream.Config {
	cfg.PacketSize = relay.PacketSize
	return cfg
}

// startRelay sets up the relay client and the relayed transport and
// accepts sessions on it. Nothing is sent until a dial or an introduction
// needs the relay.
func (n *Node) startRelay() error {
	c, err := relay.NewClient(relay.ClientConfig{
		Key: n.key, Socket: n.sock.Transport(), DialTCP: n.serverDialTCP(), Dialers: n.relayDialers(),
		Token: n.cfg.RelayToken, Logger: n.log,
		Prefer: func() string {
			// Registered over TCP: UDP is likely blocked, so do not make
			// the relay link wait for a UDP attempt to time out first.
			if n.client != nil && !n.Observed().IsValid() {
				return "tls"
			}
			return ""
		},
	})
	if err != nil {
		return err
	}
	tr := &quic.Transport{Conn: c.PacketConn()}
	ln, err := stream.Listen(tr, n.key, relaySessionConfig(n.cfg.Session))
	if err != nil {
		c.Close()
		return err
	}
	n.relay = &relayState{client: c, tr: tr, ln: ln}
	n.goRun(func() { n.acceptFrom(ln, StrategyRelay) })
	return nil
}

// closeRelay stops the relay side (Close calls it).
func (n *Node) closeRelay() {
	if n.relay == nil {
		return
	}
	n.relay.ln.Close()
	n.relay.tr.Close()
	n.relay.client.Close()
}

// RelayTransport returns the transport of the node's link to its relay
// ("udp", "tls"), or "" without one.
func (n *Node) RelayTransport() string {
	if n.relay == nil {
		return ""
	}
	return n.relay.client.Transport()
}

// relayEntry is the relay's rung.
func (n *Node) relayEntry() strategy.Entry {
	return strategy.Entry{Strategy: &relay.Strategy{
		Client:    func() *relay.Client { return n.relay.client },
		Transport: func() *quic.Transport { return n.relay.tr },
		Server:    n.relayServer,
	}}
}

// relayServer is the relay the node uses: the rendezvous server it is
// registered with, which introduced it to its peer.
func (n *Node) relayServer() rendezvous.ServerAddr {
	if n.client == nil || n.relay == nil {
		return rendezvous.ServerAddr{}
	}
	return n.client.Current()
}

// withRelayDelay makes the relay rung start delay after the dial (the
// rung before it gets whatever head start is left), so the relay joins
// promptly even though hole punching may try for 10 s before it fails.
// A failure of every earlier rung still starts it at once (strategy.Race).
func withRelayDelay(ladder []strategy.Entry, delay time.Duration) []strategy.Entry {
	i := slices.IndexFunc(ladder, func(e strategy.Entry) bool { return isRelayed(e.Strategy.Name()) })
	if i < 1 {
		return ladder
	}
	out := append([]strategy.Entry(nil), ladder...)
	var before time.Duration
	for _, e := range out[:i-1] {
		before += e.HeadStart
	}
	out[i-1].HeadStart = max(delay-before, 0)
	return out
}

// isRelayed reports whether a rung relays (the hosted relay, TURN, a
// supernode): those join the race after the relay delay, and their
// sessions are reported and upgraded in the background.
func isRelayed(strategyName string) bool {
	return strategyName == StrategyRelay || strategyName == StrategyTURN || strategyName == StrategySupernode
}

// relayDelay is the relay rung's delay for a dial whose peer answered
// remote.
//
// With the default delay, the wait adapts to the path: intro is how long
// the introduction took (offer to the server, on to the peer, answer back:
// each access link crossed twice, like a round trip between the peers).
// The peer-to-peer rungs finish within about two such round trips when
// they can work at all, so the forwarding rungs join after
// 2*intro + adaptiveSlack, never sooner than adaptiveFloor nor later than
// DefaultRelayDelay.
func (n *Node) relayDelay(remote rendezvous.PeerInfo, intro time.Duration) time.Duration {
	d := n.cfg.RelayDelay
	if d <= 0 {
		d = DefaultRelayDelay
		if intro > 0 {
			d = min(d, max(2*intro+adaptiveSlack, adaptiveFloor))
		}
	}
	remoteUDP := false
	for _, c := range remote.Candidates {
		remoteUDP = remoteUDP || c.Kind == rendezvous.Reflexive
	}
	if !remoteUDP || !n.Observed().IsValid() {
		d = min(d, blockedRelayDelay)
	}
	return d
}

// relayCandidate is the candidate a dialler with a relay rung puts in its
// offer: the relay's address. It tells the listener to link to the relay
// of the server that introduced them, so the relayed handshake finds it.
func (n *Node) relayCandidate(ctx context.Context) []rendezvous.Candidate {
	sa := n.relayServer()
	if sa.IsZero() {
		return nil
	}
	ip, err := netip.ParseAddr(sa.Host)
	if err != nil {
		ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", sa.Host)
		if err != nil || len(ips) == 0 {
			return nil
		}
		ip = ips[0]
	}
	return []rendezvous.Candidate{{Addr: netip.AddrPortFrom(ip.Unmap(), sa.Port), Kind: rendezvous.Relay}}
}

// relayIntroduced links the listening side to the relay when a dialler's
// offer says it may come through it.
func (n *Node) relayIntroduced(offer rendezvous.PeerInfo) {
	if n.relay == nil {
		return
	}
	for _, c := range offer.Candidates {
		if c.Kind != rendezvous.Relay {
			continue
		}
		sa := n.relayServer()
		if sa.IsZero() {
			return
		}
		n.goRun(func() {
			ctx, cancel := context.WithTimeout(n.ctx, 10*time.Second)
			defer cancel()
			if _, err := n.relay.client.Connect(ctx, sa); err != nil && n.ctx.Err() == nil {
				n.log.Warn("relay: cannot link to the relay for an introduced peer", "peer", offer.Peer.Short(), "err", err)
			}
		})
		return
	}
}

// event logs e and hands it to Config.OnPathEvent.
func (n *Node) event(e PathEvent) {
	args := []any{"peer", e.Peer.Short(), "event", string(e.Kind)}
	if e.Strategy != "" {
		args = append(args, "strategy", e.Strategy)
	}
	if e.Err != nil {
		args = append(args, "err", e.Err)
	}
	n.log.Info("path", args...)
	if f := n.cfg.OnPathEvent; f != nil {
		f(e)
	}
}

// relayed is called when a dial ends on the relay: it reports it and keeps
// trying the better rungs in the background.
func (n *Node) relayed(sess *stream.Session) {
	peer := sess.RemotePeer()
	n.event(PathEvent{Peer: peer, Kind: PathRelayed, Strategy: sess.Strategy(), Session: sess})
	if n.cfg.UpgradeInterval < 0 {
		return
	}
	var better []strategy.Entry
	for _, e := range n.ladder {
		if !isRelayed(e.Strategy.Name()) {
			better = append(better, e)
		}
	}
	if len(better) == 0 {
		return
	}
	n.goRun(func() { n.upgradeLoop(sess, better) })
}

// upgradeLoop tries better's rungs for peer now and then, with a doubling
// pause, while the relayed session lives and nothing better exists.
func (n *Node) upgradeLoop(sess *stream.Session, better []strategy.Entry) {
	peer := sess.RemotePeer()
	wait := n.cfg.UpgradeInterval
	if wait == 0 {
		wait = DefaultUpgradeInterval
	}
	for {
		if s := n.liveSession(peer); s != nil && !isRelayed(s.Strategy()) {
			return // a better session exists (the peer dialled us, say)
		}
		n.event(PathEvent{Peer: peer, Kind: PathUpgradeAttempt})
		ctx, cancel := context.WithTimeout(n.ctx, upgradeTimeout)
		s, name, err := n.introduceAndRace(ctx, peer, better)
		cancel()
		if err == nil {
			if !n.track(s) {
				s.CloseWithError(0, "node closed")
				return
			}
			n.goRun(func() { n.acceptStreams(s) })
			n.event(PathEvent{Peer: peer, Kind: PathUpgraded, Strategy: name, Session: s})
			return
		}
		if n.ctx.Err() != nil || sess.Context().Err() != nil {
			return
		}
		n.event(PathEvent{Peer: peer, Kind: PathUpgradeFailed, Err: err})
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-sess.Done():
			t.Stop()
			return
		case <-n.ctx.Done():
			t.Stop()
			return
		}
		wait = min(2*wait, maxUpgradeInterval)
	}
}

// acceptFrom takes sessions other peers open on ln, recording strategy
// as their rung.
func (n *Node) acceptFrom(ln *stream.Listener, strategyName string) {
	for {
		sess, err := ln.Accept(n.ctx)
		if err != nil {
			return
		}
		sess.SetStrategy(strategyName)
		n.log.Debug("session accepted", "peer", sess.RemotePeer().Short(), "strategy", strategyName)
		if !n.track(sess) {
			sess.CloseWithError(0, "node closed")
			return
		}
		n.goRun(func() { n.acceptStreams(sess) })
	}
}
