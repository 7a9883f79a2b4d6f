// Package mdns finds reach peers on the local link without a server, by
// multicast DNS (RFC 6762) with DNS-SD names (RFC 6763): a node announces
// "<peer ID>._reach._udp.local." (an SRV record with its UDP port, A and
// AAAA records with its addresses); a dialler asks for that name and gets
// the answer by unicast (a "legacy" one-shot query from an ephemeral
// port, RFC 6762 section 6.7), so it need not join the group.
//
// It is written on golang.org/x/net/dns/dnsmessage rather than on an mDNS
// library: hashicorp/mdns opens its own sockets and keeps every name a
// response names for the length of a query (unbounded, fed by anyone on
// the link), and pion/mdns answers A/AAAA only (no port). See
// docs/dependencies.md.
//
// Limits: a responder answers at most ResponseRate questions a second
// (for its own name only, which nobody else can make it say), and a query
// keeps at most MaxAddrs addresses of the one name it asked, for the
// length of the call. The peer's key is proved by the session's handshake,
// so a forged answer costs a failed dial, never a stranger's session.
package mdns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/net/ipv4"
	"golang.org/x/time/rate"

	"github.com/reachp2p/reach/identity"
)

// Port and Group are mDNS's IPv4 port and group.
const Port = 5353

// Group is the mDNS IPv4 multicast group.
var Group = netip.AddrPortFrom(netip.AddrFrom4([4]byte{224, 0, 0, 251}), Port)

// Service is the DNS-SD service type of reach nodes.
const Service = "_reach._udp.local."

// Limits.
const (
	// ResponseRate and ResponseBurst bound the answers a responder sends.
	ResponseRate  = 20
	ResponseBurst = 40
	// MaxAddrs is the most addresses a query keeps.
	MaxAddrs = 16
	// ttl of the records, in seconds (RFC 6762 recommends 120 for these).
	ttl = 120
)

// ErrNotFound: no answer for the peer on the link before the context
// ended.
var ErrNotFound = errors.New("mdns: peer not found on the local network")

// Name returns the service instance name of peer.
func Name(peer identity.PeerID) string { return peer.String() + "." + Service }

// hostName returns the host name the SRV record points to.
func hostName(peer identity.PeerID) string { return peer.String() + ".local." }

// Responder answers questions for one node's name.
type Responder struct {
	conn  *net.UDPConn
	peer  identity.PeerID
	port  uint16
	addrs func() []netip.Addr
	log   *slog.Logger
	lim   *rate.Limiter
	done  chan struct{}
}

// Listen starts answering for peer at port with the addresses addrs
// returns (asked at each answer), on every multicast interface. Close
// stops it.
func Listen(peer identity.PeerID, port uint16, addrs func() []netip.Addr, log *slog.Logger) (*Responder, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c, err := net.ListenMulticastUDP("udp4", nil, net.UDPAddrFromAddrPort(Group))
	if err != nil {
		return nil, fmt.Errorf("mdns: %w", err)
	}
	// ListenMulticastUDP joined on the default interface; join on the
	// others too (an error means joined already, or no multicast there).
	pc := ipv4.NewPacketConn(c)
	ifs, _ := net.Interfaces()
	for i := range ifs {
		if ifs[i].Flags&net.FlagUp != 0 && ifs[i].Flags&net.FlagMulticast != 0 {
			pc.JoinGroup(&ifs[i], &net.UDPAddr{IP: Group.Addr().AsSlice()})
		}
	}
	pc.SetMulticastTTL(255)
	r := &Responder{conn: c, peer: peer, port: port, addrs: addrs, log: log, lim: rate.NewLimiter(ResponseRate, ResponseBurst), done: make(chan struct{})}
	go r.serve()
	return r, nil
}

// Close stops the responder.
func (r *Responder) Close() error {
	err := r.conn.Close()
	<-r.done
	return err
}

func (r *Responder) serve() {
	defer close(r.done)
	buf := make([]byte, 9000)
	name := strings.ToLower(Name(r.peer))
	for {
		n, from, err := r.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		id, asked, ok := questionFor(buf[:n], name)
		if !ok || !asked {
			continue
		}
		if !r.lim.Allow() {
			r.log.Debug("mdns: answer over the rate limit", "from", from)
			continue
		}
		// A query from port 5353 is a full mDNS querier: answer to the
		// group; any other port is a one-shot query: answer it directly,
		// with its ID (RFC 6762, 6.7).
		to := from
		if from.Port() == Port {
			to, id = Group, 0
		}
		msg, err := r.answer(id)
		if err != nil {
			r.log.Debug("mdns: answer", "err", err)
			continue
		}
		r.conn.WriteToUDPAddrPort(msg, to)
	}
}

// questionFor parses a query and reports whether it asks for name (SRV,
// or ANY).
func questionFor(b []byte, name string) (id uint16, asked, ok bool) {
	var p dnsmessage.Parser
	h, err := p.Start(b)
	if err != nil || h.Response {
		return 0, false, false
	}
	for range 16 {
		q, err := p.Question()
		if err != nil {
			break
		}
		if (q.Type == dnsmessage.TypeSRV || q.Type == dnsmessage.TypeALL) && strings.EqualFold(q.Name.String(), name) {
			return h.ID, true, true
		}
	}
	return h.ID, false, true
}

func (r *Responder) answer(id uint16) ([]byte, error) {
	inst, err := dnsmessage.NewName(Name(r.peer))
	if err != nil {
		return nil, err
	}
	host, err := dnsmessage.NewName(hostName(r.peer))
	if err != nil {
		return nil, err
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: id, Response: true, Authoritative: true})
	b.EnableCompression()
	b.StartAnswers()
	// Class IN with the cache-flush bit: these records are unique to us.
	class := dnsmessage.Class(0x8000 | uint16(dnsmessage.ClassINET))
	if err := b.SRVResource(dnsmessage.ResourceHeader{Name: inst, Class: class, TTL: ttl},
		dnsmessage.SRVResource{Target: host, Port: r.port}); err != nil {
		return nil, err
	}
	b.StartAdditionals()
	for _, a := range r.addrs() {
		hdr := dnsmessage.ResourceHeader{Name: host, Class: class, TTL: ttl}
		if a.Is4() || a.Is4In6() {
			err = b.AResource(hdr, dnsmessage.AResource{A: a.Unmap().As4()})
		} else {
			err = b.AAAAResource(hdr, dnsmessage.AAAAResource{AAAA: a.As16()})
		}
		if err != nil {
			return nil, err
		}
	}
	return b.Finish()
}

// Resolve asks the link for peer's addresses and returns them (at most
// MaxAddrs) with its port, or ErrNotFound when ctx ends first. It asks
// three times (at once, after 250 ms, after 1 s) from a socket of its
// own.
func Resolve(ctx context.Context, peer identity.PeerID) ([]netip.AddrPort, error) {
	c, err := net.ListenUDP("udp4", nil)
	if err != nil {
		return nil, fmt.Errorf("mdns: %w", err)
	}
	defer c.Close()
	var retrying sync.WaitGroup
	defer retrying.Wait() // after cancel, below
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Now()) })
	defer stop()
	name := Name(peer)
	q, err := query(name)
	if err != nil {
		return nil, err
	}
	send := func() { c.WriteToUDPAddrPort(q, Group) }
	send()
	retries := []time.Duration{250 * time.Millisecond, time.Second}
	retrying.Go(func() {
		for _, d := range retries {
			select {
			case <-time.After(d):
				send()
			case <-ctx.Done():
				return
			}
		}
	})
	buf := make([]byte, 9000)
	for {
		n, _, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("%w: %v", ErrNotFound, ctx.Err())
			}
			return nil, fmt.Errorf("mdns: %w", err)
		}
		if out := parseAnswer(buf[:n], name, hostName(peer)); len(out) > 0 {
			return out, nil
		}
	}
}

func query(name string) ([]byte, error) {
	n, err := dnsmessage.NewName(name)
	if err != nil {
		return nil, err
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 0x5245})
	b.StartQuestions()
	if err := b.Question(dnsmessage.Question{Name: n, Type: dnsmessage.TypeSRV, Class: dnsmessage.ClassINET}); err != nil {
		return nil, err
	}
	return b.Finish()
}

// parseAnswer returns the addresses a response gives for inst (its SRV
// port) and host (its A and AAAA records), at most MaxAddrs; nil if it
// has no SRV for inst or no address. Every other record is ignored. A
// message is at most one datagram, so what is parsed is bounded.
func parseAnswer(b []byte, inst, host string) []netip.AddrPort {
	var p dnsmessage.Parser
	h, err := p.Start(b)
	if err != nil || !h.Response || p.SkipAllQuestions() != nil {
		return nil
	}
	answers, err := p.AllAnswers()
	if err != nil || p.SkipAllAuthorities() != nil {
		return nil
	}
	extra, err := p.AllAdditionals()
	if err != nil {
		return nil
	}
	var port uint16
	var addrs []netip.Addr
	for _, r := range append(answers, extra...) {
		name := r.Header.Name.String()
		switch body := r.Body.(type) {
		case *dnsmessage.SRVResource:
			if strings.EqualFold(name, inst) && strings.EqualFold(body.Target.String(), host) {
				port = body.Port
			}
		case *dnsmessage.AResource:
			if strings.EqualFold(name, host) && len(addrs) < MaxAddrs {
				addrs = append(addrs, netip.AddrFrom4(body.A))
			}
		case *dnsmessage.AAAAResource:
			a := netip.AddrFrom16(body.AAAA)
			if strings.EqualFold(name, host) && len(addrs) < MaxAddrs && !a.IsLinkLocalUnicast() {
				addrs = append(addrs, a)
			}
		}
	}
	if port == 0 || len(addrs) == 0 {
		return nil
	}
	out := make([]netip.AddrPort, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, netip.AddrPortFrom(a, port))
	}
	return out
}
