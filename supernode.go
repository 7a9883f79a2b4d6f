package reach

import (
	"context"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/strategy"
	"github.com/reachp2p/reach/stream"
	"github.com/reachp2p/reach/supernode"
)

// StrategySupernode is the rung between hole punching and the hosted
// relay: a volunteer peer with open ports forwards the session's
// (encrypted) packets.
const StrategySupernode = supernode.Name

// PathSupernodeLost: the volunteer that carried Session vanished; the node
// closed the session with supernode.ErrVolunteerGone (Err), so its streams
// fail with that error instead of hanging. The next Dial finds another
// path (another volunteer, TURN or the hosted relay).
const PathSupernodeLost PathEventKind = "supernode-lost"

// supernodeHeadStart is how long the supernode rung runs alone before
// TURN or the hosted relay joins (at once if it fails: a volunteer at its
// limit refuses at once).
const supernodeHeadStart = time.Second

// listen starts the node's QUIC listener: reach sessions, and for a
// volunteer also the relay links peers open to it.
func (n *Node) listen() (*stream.Listener, error) {
	if !n.cfg.Supernode.Enable {
		return stream.Listen(n.sock.Transport(), n.key, n.cfg.Session)
	}
	n.snVol = supernode.NewVolunteer(n.cfg.Supernode, n.log.With("supernode", "volunteer"))
	rs := n.snVol.Relay()
	return stream.ListenWith(n.sock.Transport(), n.key, n.cfg.Session, map[string]func(*quic.Conn){
		relay.ALPN: func(qc *quic.Conn) { n.goRun(func() { rs.ServeQUIC(n.ctx, qc) }) },
	})
}

// volunteerOffer is the rendezvous client's Volunteer: nil unless the node
// volunteers.
func (n *Node) volunteerOffer() *rendezvous.VolunteerOffer {
	if n.snVol == nil {
		return nil
	}
	return n.snVol.Offer()
}

// volunteerVerdict records a server's verdict on the node's offer.
func (n *Node) volunteerVerdict(st rendezvous.VolunteerStatus) {
	if n.snVol != nil {
		n.snVol.Verdict(st)
	}
}

// startSupernodePool sets up the node's links to volunteers (none is
// opened until a dial or an introduction needs one).
func (n *Node) startSupernodePool() error {
	p, err := supernode.NewPool(supernode.PoolConfig{
		Key: n.key, Socket: n.sock.Transport(), Session: n.cfg.Session, Logger: n.log,
		OnSession: func(sess *stream.Session) {
			n.log.Debug("session accepted", "peer", sess.RemotePeer().Short(), "strategy", StrategySupernode)
			if !n.track(sess) {
				sess.CloseWithError(0, "node closed")
				return
			}
			n.goRun(func() { n.acceptStreams(sess) })
		},
		OnLost: func(_ identity.PeerID, sess *stream.Session) {
			n.event(PathEvent{Peer: sess.RemotePeer(), Kind: PathSupernodeLost, Strategy: StrategySupernode,
				Session: sess, Err: supernode.ErrVolunteerGone})
		},
	})
	if err != nil {
		return err
	}
	n.snPool = p
	return nil
}

// closeSupernodes ends the links to volunteers (Close calls it); the
// volunteer's own links end with the node's context.
func (n *Node) closeSupernodes() {
	if n.snPool != nil {
		n.snPool.Close()
	}
}

// supernodeEntry is the supernode rung.
func (n *Node) supernodeEntry() strategy.Entry {
	return strategy.Entry{Strategy: &supernode.Strategy{Pool: func() *supernode.Pool { return n.snPool }},
		HeadStart: supernodeHeadStart}
}

// wantSupernodes reports whether a dial on ladder should ask the server
// for volunteers: the rung is there and this node's UDP works (links to
// volunteers are QUIC).
func (n *Node) wantSupernodes(ladder []strategy.Entry) bool {
	return n.snPool != nil && hasStrategy(ladder, StrategySupernode) && n.Observed().IsValid()
}

// withoutIdleSupernode drops the supernode rung when the answer offers no
// volunteer or the peer has no UDP (it registered over TCP): a rung that
// fails at once would start the next relayed rung early.
func withoutIdleSupernode(ladder []strategy.Entry, answer rendezvous.PeerInfo) []strategy.Entry {
	if !hasStrategy(ladder, StrategySupernode) {
		return ladder
	}
	remoteUDP := false
	for _, c := range answer.Candidates {
		remoteUDP = remoteUDP || c.Kind == rendezvous.Reflexive
	}
	if remoteUDP && len(supernode.Candidates(answer)) > 0 {
		return ladder
	}
	out := make([]strategy.Entry, 0, len(ladder))
	for _, e := range ladder {
		if e.Strategy.Name() != StrategySupernode {
			out = append(out, e)
		}
	}
	return out
}

// supernodeIntroduced links the listening side to the volunteers an
// offer names (the dialler will come through one of them).
func (n *Node) supernodeIntroduced(offer rendezvous.PeerInfo) {
	cands := supernode.Candidates(offer)
	if n.snPool == nil || len(cands) == 0 || !n.Observed().IsValid() {
		return
	}
	for _, c := range cands {
		n.goRun(func() {
			ctx, cancel := context.WithTimeout(n.ctx, 10*time.Second)
			defer cancel()
			if err := n.snPool.Link(ctx, c); err != nil && n.ctx.Err() == nil {
				n.log.Debug("supernode: cannot link for an introduced peer", "peer", offer.Peer.Short(), "volunteer", c.Peer.Short(), "err", err)
			}
		})
	}
}

// Supernode reports the node's supernode side: whether it volunteers and
// is admitted by its server, whom it forwards for and how much, and the
// volunteers it uses itself.
func (n *Node) Supernode() supernode.Status {
	var st supernode.Status
	if n.snVol != nil {
		var sa rendezvous.ServerAddr
		if n.client != nil {
			sa = n.client.Current()
		}
		st = n.snVol.Status(sa)
	}
	if n.snPool != nil {
		st.Using = n.snPool.Using()
	}
	return st
}

// WaitSupernode waits for the current server's verdict on the node's
// volunteer offer: the admission, or a *rendezvous.VolunteerError
// (errors.Is rendezvous.ErrNotAdmitted). Without Config.Supernode.Enable
// it returns rendezvous.ErrNotAdmitted at once. ctx bounds the wait (an
// old server that does not know supernodes never answers).
func (n *Node) WaitSupernode(ctx context.Context) (rendezvous.VolunteerStatus, error) {
	if n.snVol == nil || n.client == nil {
		return rendezvous.VolunteerStatus{}, rendezvous.ErrNotAdmitted
	}
	st, err := n.snVol.Wait(ctx, rendezvous.ServerAddr{})
	if err != nil {
		return st, err
	}
	return st, st.Err
}
