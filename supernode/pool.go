package supernode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/pathsock"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/stream"
)

// Defaults of PoolConfig.
const (
	// LinkIdleTimeout is the QUIC idle timeout of links to volunteers: a
	// volunteer that vanishes without a word is noticed within it, and
	// the sessions through it fail with ErrVolunteerGone.
	LinkIdleTimeout = 5 * time.Second
	// linkKeepAlive keeps links busy enough for LinkIdleTimeout.
	linkKeepAlive = time.Second
	// linkDialTimeout bounds one link attempt to a volunteer, so that the
	// next one gets its turn.
	linkDialTimeout = 2 * time.Second
	// idleLink is how long a link without sessions is kept (the listener
	// links to every volunteer of an introduction; the dialler uses one).
	idleLink = 30 * time.Second
	// deadFor is how long a volunteer whose link died is skipped.
	deadFor = time.Minute
)

// PoolConfig configures a Pool. Key and Socket are required; every other
// zero value is usable.
type PoolConfig struct {
	// Key is the node's identity, proved to volunteers and peers.
	Key *identity.Key
	// Socket is the node's shared UDP socket: links are QUIC from it.
	Socket *quic.Transport
	// Session configures the sessions through volunteers (PacketSize is
	// set to relay.PacketSize).
	Session stream.Config
	// OnSession receives each session a peer opens to this node through a
	// volunteer. It must not block. Nil: they are closed.
	OnSession func(*stream.Session)
	// OnLost is called (it must not block) for each session that ran
	// through a volunteer whose link ended, after the session was closed
	// with ErrVolunteerGone.
	OnLost func(volunteer identity.PeerID, sess *stream.Session)
	// Rescue, when the link to a volunteer ends, is asked once per peer
	// whose sessions ran through it (at their address on the node's
	// socket, key) to give them another forwarded path (the hosted
	// relay's); it blocks until that path is ready or failed. True: those
	// sessions live on there, and are neither closed nor passed to
	// OnLost. Nil: every session is closed (ErrVolunteerGone).
	Rescue func(peer identity.PeerID, key netip.AddrPort) bool
	// Logger receives the pool's logs. Nil: discard.
	Logger *slog.Logger
}

// Pool keeps a node's links to volunteers and the sessions through them.
// Its methods are safe for concurrent use.
type Pool struct {
	cfg    PoolConfig
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	links map[identity.PeerID]*vlink
	dead  map[identity.PeerID]time.Time

	// paths, when set (by the node's rung, before the first link), is the
	// node's socket: sessions through volunteers then run on its own QUIC
	// transport (cfg.Socket), each peer at its virtual address with the
	// volunteer as its path, instead of on a transport per link.
	paths *pathsock.Conn
}

// vlink is the node's link to one volunteer: a relay client and the
// sessions through it, either on the node's own transport (Pool.paths) or
// on a QUIC transport on the client's packet connection (tr, ln).
type vlink struct {
	p      *Pool
	peer   identity.PeerID
	addr   rendezvous.ServerAddr
	client *relay.Client
	tr     *quic.Transport  // nil with Pool.paths
	ln     *stream.Listener // nil with Pool.paths

	mu        sync.Mutex
	token     string
	watching  bool
	sessions  map[*stream.Session]struct{}
	idleSince time.Time
	vpaths    map[identity.PeerID]*vpath // with Pool.paths: the peers' paths through it
}

// vpath is a peer's path through a volunteer on the node's socket.
type vpath struct {
	*relay.PeerPath
	vl *vlink
}

// Name says which rung the path belongs to: "supernode".
func (*vpath) Name() string { return Name }

// Accepted records a session the node accepted on this path, so that it
// ends with ErrVolunteerGone when the volunteer goes.
func (vp *vpath) Accepted(sess *stream.Session) {
	sess.SetStrategy(Name)
	vp.vl.add(sess)
}

// path returns peer's path through vl (one per peer, so that it can be
// taken back: ClearFallback compares paths).
func (vl *vlink) path(peer identity.PeerID) *vpath {
	vl.mu.Lock()
	defer vl.mu.Unlock()
	if vl.vpaths == nil {
		vl.vpaths = map[identity.PeerID]*vpath{}
	}
	vp := vl.vpaths[peer]
	if vp == nil {
		vp = &vpath{PeerPath: vl.client.Path(peer), vl: vl}
		vl.vpaths[peer] = vp
	}
	return vp
}

// NewPool makes a pool; it links on demand.
func NewPool(cfg PoolConfig) (*Pool, error) {
	if cfg.Key == nil || cfg.Socket == nil {
		return nil, errors.New("supernode: PoolConfig.Key and Socket are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Session.PacketSize = relay.PacketSize
	p := &Pool{cfg: cfg, log: cfg.Logger, links: map[identity.PeerID]*vlink{}, dead: map[identity.PeerID]time.Time{}}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.wg.Go(p.reap)
	return p, nil
}

// Using lists the volunteers the node is linked to.
func (p *Pool) Using() []identity.PeerID {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]identity.PeerID, 0, len(p.links))
	for id := range p.links {
		out = append(out, id)
	}
	return out
}

// Close ends every link (sessions through them end too) and waits.
func (p *Pool) Close() error {
	p.cancel()
	p.mu.Lock()
	links := p.links
	p.links = map[identity.PeerID]*vlink{}
	p.mu.Unlock()
	for _, vl := range links {
		vl.close()
	}
	p.wg.Wait()
	return nil
}

// Link makes sure the node has a link to the volunteer of c (a Supernode
// candidate), allows peer (the peer of the introduction that named the
// volunteer) to send to the node through it, and returns once the link
// is up. ctx bounds the wait. The links ask for consent
// (relay.ClientConfig.Consent): the volunteer forwards to the node only
// from the peers it allowed this way or dialled, not from anyone else
// holding a token for the volunteer.
func (p *Pool) Link(ctx context.Context, c rendezvous.Candidate, peer identity.PeerID) error {
	_, err := p.link(ctx, c, peer)
	return err
}

// link links to the volunteer of c, allowing peer first (unless zero):
// a new link then asks for consent with peer allowed already, so the
// peer's first packet is not refused.
func (p *Pool) link(ctx context.Context, c rendezvous.Candidate, peer identity.PeerID) (*vlink, error) {
	if c.Kind != rendezvous.Supernode || c.Peer.IsZero() || !c.Addr.IsValid() {
		return nil, fmt.Errorf("%w: not a supernode candidate: %+v", ErrNoVolunteer, c)
	}
	p.mu.Lock()
	if p.ctx.Err() != nil {
		p.mu.Unlock()
		return nil, relay.ErrClosed
	}
	if t, ok := p.dead[c.Peer]; ok && time.Since(t) < deadFor {
		p.mu.Unlock()
		return nil, fmt.Errorf("volunteer %s vanished %v ago: %w", c.Peer.Short(), time.Since(t).Round(time.Second), ErrVolunteerGone)
	}
	vl := p.links[c.Peer]
	if vl == nil {
		var err error
		if vl, err = p.newLink(c); err != nil {
			p.mu.Unlock()
			return nil, err
		}
		p.links[c.Peer] = vl
	}
	p.mu.Unlock()
	vl.mu.Lock()
	if c.Token != "" {
		vl.token = c.Token
	}
	vl.mu.Unlock()
	if !peer.IsZero() {
		if err := vl.client.Allow(peer); err != nil {
			return nil, fmt.Errorf("supernode %s: %w", c.Peer.Short(), err)
		}
	}
	l, err := vl.client.Connect(ctx, vl.addr)
	if err != nil {
		if errors.Is(err, relay.ErrRelayFull) {
			err = fmt.Errorf("%w: %w", ErrVolunteerFull, err)
		}
		return nil, fmt.Errorf("supernode %s: %w", c.Peer.Short(), err)
	}
	vl.mu.Lock()
	watch := !vl.watching
	vl.watching = true
	vl.mu.Unlock()
	if watch {
		p.wg.Go(func() {
			select {
			case <-l.Done():
				p.lost(vl, l.Err())
			case <-p.ctx.Done():
			}
		})
	}
	return vl, nil
}

// newLink sets up (without dialling) the link to c's volunteer.
func (p *Pool) newLink(c rendezvous.Candidate) (*vlink, error) {
	vl := &vlink{p: p, peer: c.Peer, sessions: map[*stream.Session]struct{}{}, idleSince: time.Now(),
		addr: rendezvous.ServerAddr{ID: c.Peer, Host: c.Addr.Addr().Unmap().String(), Port: c.Addr.Port()}}
	ccfg := relay.ClientConfig{
		Key: p.cfg.Key,
		Dialers: []relay.LinkDialer{relay.UDPDialer{Socket: p.cfg.Socket,
			KeepAlive: linkKeepAlive, IdleTimeout: LinkIdleTimeout}},
		Token: func() string {
			vl.mu.Lock()
			defer vl.mu.Unlock()
			return vl.token
		},
		DialTimeout: linkDialTimeout,
		// Consent: the volunteer forwards to this node only from the
		// peers it allowed (Link) or dialled (relay.Strategy allows the
		// peer it dials).
		Consent: true,
		Logger:  p.log,
	}
	var err error
	if p.paths != nil {
		vl.client, err = relay.NewPathClient(p.paths, func(_ *relay.Client, peer identity.PeerID) pathsock.Path { return vl.path(peer) }, ccfg)
		return vl, err
	}
	vl.client, err = relay.NewClient(ccfg)
	if err != nil {
		return nil, err
	}
	vl.tr = &quic.Transport{Conn: vl.client.PacketConn()}
	if vl.ln, err = stream.Listen(vl.tr, p.cfg.Key, p.cfg.Session); err != nil {
		vl.client.Close()
		return nil, err
	}
	p.wg.Go(vl.accept)
	return vl, nil
}

// accept takes the sessions peers open through the volunteer.
func (vl *vlink) accept() {
	for {
		sess, err := vl.ln.Accept(vl.p.ctx)
		if err != nil {
			return
		}
		sess.SetStrategy(Name)
		vl.add(sess)
		if f := vl.p.cfg.OnSession; f != nil {
			f(sess)
		} else {
			sess.CloseWithError(0, "not accepting")
		}
	}
}

// add records a session on vl until it ends.
func (vl *vlink) add(sess *stream.Session) {
	vl.mu.Lock()
	vl.sessions[sess] = struct{}{}
	vl.mu.Unlock()
	vl.p.wg.Go(func() {
		select {
		case <-sess.Done():
		case <-vl.p.ctx.Done():
		}
		vl.mu.Lock()
		delete(vl.sessions, sess)
		if len(vl.sessions) == 0 {
			vl.idleSince = time.Now()
		}
		vl.mu.Unlock()
	})
}

// lost handles the end of vl's link: the volunteer is gone (or refused
// us for good). Its sessions are closed with ErrVolunteerGone, but those
// that moved to a direct path meanwhile. A link the volunteer ended
// because its token expired (it had no session left to carry, relay's
// KeepSessionsPastExpiry) does not make the volunteer dead: the next
// introduction links again with a fresh token.
func (p *Pool) lost(vl *vlink, err error) {
	p.mu.Lock()
	if p.links[vl.peer] != vl {
		p.mu.Unlock()
		return
	}
	delete(p.links, vl.peer)
	expired := errors.Is(err, relay.ErrTokenExpired)
	if !expired {
		p.dead[vl.peer] = time.Now()
	}
	p.mu.Unlock()
	vl.mu.Lock()
	var sessions []*stream.Session
	for s := range vl.sessions {
		if p.paths != nil {
			if direct, _, err := p.paths.Current(s.QUICAddr()); err == nil && direct.IsValid() {
				continue // it moved to a direct path: it does not need the volunteer
			}
		}
		sessions = append(sessions, s)
	}
	vl.mu.Unlock()
	if expired {
		p.log.Debug("supernode: volunteer ended the link at its token's expiry", "volunteer", vl.peer.Short(), "sessions", len(sessions))
	} else {
		p.log.Warn("supernode: link to volunteer lost", "volunteer", vl.peer.Short(), "sessions", len(sessions), "err", err)
	}
	sessions = p.rescue(sessions)
	for _, s := range sessions {
		s.CloseWithError(CodeVolunteerGone, "supernode: volunteer gone")
	}
	vl.close()
	for _, s := range sessions {
		if f := p.cfg.OnLost; f != nil {
			f(vl.peer, s)
		}
	}
}

func (vl *vlink) close() {
	if vl.ln != nil {
		vl.ln.Close()
		vl.tr.Close()
	}
	vl.client.Close()
	// Peers whose path is this volunteer have none through it any more:
	// the next dial, or relayed packet, gives them another.
	vl.mu.Lock()
	vpaths := vl.vpaths
	vl.vpaths = nil
	vl.mu.Unlock()
	if paths := vl.p.paths; paths != nil {
		for peer, vp := range vpaths {
			if key, ok := paths.Lookup(peer.String()); ok {
				paths.ClearFallback(key, vp)
			}
		}
	}
}

// reap closes links that have had no session for idleLink and forgets
// old deaths.
func (p *Pool) reap() {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case now := <-t.C:
			var idle []*vlink
			p.mu.Lock()
			for id, vl := range p.links {
				vl.mu.Lock()
				if len(vl.sessions) == 0 && now.Sub(vl.idleSince) > idleLink {
					idle = append(idle, vl)
					delete(p.links, id)
				}
				vl.mu.Unlock()
			}
			for id, t := range p.dead {
				if now.Sub(t) > deadFor {
					delete(p.dead, id)
				}
			}
			p.mu.Unlock()
			for _, vl := range idle {
				p.log.Debug("supernode: closing idle link", "volunteer", vl.peer.Short())
				vl.close()
			}
		}
	}
}

// rescue asks PoolConfig.Rescue, in parallel, for a new path for each
// peer of sessions (those at a virtual address of the node's socket) and
// returns the sessions that still have none.
func (p *Pool) rescue(sessions []*stream.Session) []*stream.Session {
	if p.cfg.Rescue == nil || p.paths == nil || len(sessions) == 0 {
		return sessions
	}
	type target struct {
		peer identity.PeerID
		key  netip.AddrPort
	}
	saved := map[target]bool{}
	for _, s := range sessions {
		saved[target{s.RemotePeer(), s.QUICAddr()}] = false
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for t := range saved {
		wg.Go(func() {
			ok := p.cfg.Rescue(t.peer, t.key)
			mu.Lock()
			saved[t] = ok
			mu.Unlock()
		})
	}
	wg.Wait()
	var left []*stream.Session
	for _, s := range sessions {
		if !saved[target{s.RemotePeer(), s.QUICAddr()}] {
			left = append(left, s)
		}
	}
	return left
}
