package pathsock

import (
	"net/netip"
	"sync"
	"time"
)

// A client's first flight (its QUIC Initial packets) may be lost to a NAT
// that was not open yet: hole punching dials a peer's address before the
// checks prove it open, to save a round trip when it is. quic-go resends
// lost Initials only after its probe timeout, 200-300 ms. So the Conn keeps
// the Initial packets it sent to each address for a while, and
// ResendInitials sends them again the moment the path is known to be open:
// an exact copy is a valid retransmission (a server that got the first
// one drops the copy as a duplicate).
const (
	// maxFlights bounds the addresses whose first flight is kept.
	maxFlights = 64
	// maxFlightPackets bounds the packets kept per address (a ClientHello
	// with a post-quantum key share takes two Initials).
	maxFlightPackets = 4
	// flightLife is how long a first flight is kept.
	flightLife = 10 * time.Second
)

type flight struct {
	at   time.Time
	pkts [][]byte
}

type flights struct {
	mu  sync.Mutex
	m   map[netip.AddrPort]*flight
	max int // packets kept per address; zero: maxFlightPackets
}

// isInitialV1 reports whether b starts with a QUIC version 1 Initial
// packet (long header, fixed bit, type 0).
func isInitialV1(b []byte) bool {
	return len(b) >= 5 && b[0]&0xf0 == 0xc0 && b[1] == 0 && b[2] == 0 && b[3] == 0 && b[4] == 1
}

// note keeps a copy of b, an Initial packet sent to to.
func (f *flights) note(to netip.AddrPort, b []byte) {
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m == nil {
		f.m = map[netip.AddrPort]*flight{}
	}
	fl := f.m[to]
	if fl == nil || now.Sub(fl.at) > flightLife {
		if fl == nil && len(f.m) >= maxFlights {
			for a, old := range f.m { // drop the stale, or any one
				if now.Sub(old.at) > flightLife || len(f.m) >= maxFlights {
					delete(f.m, a)
				}
				if len(f.m) < maxFlights {
					break
				}
			}
		}
		fl = &flight{at: now}
		f.m[to] = fl
	}
	limit := f.max
	if limit == 0 {
		limit = maxFlightPackets
	}
	if len(fl.pkts) < limit {
		fl.pkts = append(fl.pkts, append([]byte(nil), b...))
	}
}

// take removes and returns the first flight kept for to, if still fresh.
func (f *flights) take(to netip.AddrPort) [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	fl := f.m[to]
	delete(f.m, to)
	if fl == nil || time.Since(fl.at) > flightLife {
		return nil
	}
	return fl.pkts
}

// ResendInitials sends again the Initial packets the Conn sent to addr in
// the last flightLife (at most maxFlightPackets), once, and reports how
// many it sent. Call it when a path to addr has just been proved open and
// a handshake to it is still waiting.
func (c *Conn) ResendInitials(addr netip.AddrPort) int {
	addr = unmapped(addr)
	pkts := c.flights.take(addr)
	to := c.sockAddr(addr)
	n := 0
	for _, p := range pkts {
		if _, _, err := c.udp.WriteMsgUDP(p, nil, to); err == nil {
			n++
		}
	}
	return n
}
