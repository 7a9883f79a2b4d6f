package relay

import "sync/atomic"

// The server counts what it does in plain atomics, indexed by small
// enums whose names are the metric label values. Nothing here knows
// about Prometheus: relay/relaymetrics reads Server.Metrics at scrape
// time, so SDK users that never run a server do not link a metrics
// library, and counting a forwarded packet is two atomic adds (no map
// lookup, no allocation).

// transport is the kind of a server-side link.
type transport uint8

const (
	transportUDP transport = iota // QUIC datagrams
	transportTLS                  // TLS over TCP (also under a WebSocket)
	numTransports
)

var transportNames = [numTransports]string{"udp", "tls"}

func (t transport) String() string { return transportNames[t] }

// dropReason is why a packet was not forwarded.
type dropReason uint8

const (
	dropNoPeer       dropReason = iota // destination not linked (or the sender itself)
	dropSessionLimit                   // would open a session past MaxSessions
	dropPeerRate                       // sender over PeerRate
	dropTotalRate                      // relay over TotalRate
	dropQueueFull                      // destination's send queue full
	dropMalformed                      // empty, oversized or truncated
	dropPeerSessions                   // would open a session past MaxSessionsPerPeer
	dropIPSessions                     // would open a session past MaxSessionsPerIP
	dropNotAllowed                     // destination has not consented to the sender
	dropUnknownLink                    // a data packet with no link's token, or not from its address
	dropTokenExpired                   // would open a session between two links whose tokens expired
	numDropReasons
)

var dropNames = [numDropReasons]string{"no_peer", "session_limit", "peer_rate", "total_rate", "queue_full", "malformed",
	"peer_sessions", "ip_sessions", "not_allowed", "unknown_link", "token_expired"}

// rejectReason is why a link was refused before registration (other than
// its token).
type rejectReason uint8

const (
	rejectFull        rejectReason = iota // at MaxClients
	rejectRateLimited                     // over ConnRate for its IP
	rejectHandshake                       // no valid HELLO
	rejectIPLinks                         // at MaxLinksPerIP for its source
	numRejectReasons
)

var rejectNames = [numRejectReasons]string{"full", "rate_limited", "handshake", "ip_links"}

// authReason is why a link's token was refused.
type authReason uint8

const (
	authBadToken authReason = iota
	authTokenExpired
	authKeyProof // ALPNKeyProof: no valid proof of the node's key
	numAuthReasons
)

var authNames = [numAuthReasons]string{"bad_token", "token_expired", "key_proof"}

// metrics are a Server's counters. The sessions gauge is Server.sessions
// itself (kept under Server.mu).
type metrics struct {
	packets, bytes atomic.Uint64 // forwarded
	// dataIn and dataOut are the packets that came and went as data
	// packets (the rest of a UDP link's packets are DATAGRAM frames).
	dataIn, dataOut atomic.Uint64

	clients  [numTransports]atomic.Int64 // linked now
	conns    [numTransports]atomic.Uint64
	rejected [numRejectReasons]atomic.Uint64
	auth     [numAuthReasons]atomic.Uint64
	drops    [numDropReasons]atomic.Uint64
	expired  atomic.Uint64 // live links ended at their token's expiry
	evicted  atomic.Uint64 // sessions ended to make room in a full table (fair.go)
	detached atomic.Int64  // UDP links detached now (data packets alone)
	// parkedTLS: TLS links parked now (no read loop; tlslink.go), and
	// how often a parked link woke.
	parkedTLS atomic.Int64
	wokeTLS   atomic.Uint64
	moved     atomic.Uint64 // detached links moved to a new address (rebind.go)
	// streamRefused are the OPENs the relay answered with a CLOSE, by
	// its code (streamwire.go).
	streamRefused [closeCodes]atomic.Uint64
}

// streamRefusalNames name the CLOSE codes the relay refuses an OPEN with
// (the reason label of reach_relay_streams_refused_total).
var streamRefusalNames = map[byte]string{
	closeNoPeer:     "no_peer",
	closeNotStream:  "not_stream",
	closeNotAllowed: "not_allowed",
	closeLimit:      "limit",
	closeProtocol:   "protocol",
}

func (m *metrics) drop(r dropReason) { m.drops[r].Add(1) }

// MetricsSnapshot is every counter and gauge of a Server, read at one
// moment (each value atomically, not all together). Every map has an
// entry for each label value the server knows, zero or not, so a new
// server already shows them all. Package relay/relaymetrics exports it to
// Prometheus as reach_relay_* metrics.
type MetricsSnapshot struct {
	// Clients are the peers linked now, by transport ("udp", "tls"; a
	// WebSocket link counts as tls).
	Clients map[string]int
	// Connections are the links registered, by transport.
	Connections map[string]uint64
	// Rejected are the links refused before registration, by reason
	// ("full", "rate_limited", "handshake", "ip_links": MaxLinksPerIP).
	Rejected map[string]uint64
	// AuthFailures are the links refused for their token, by reason
	// ("bad_token", "token_expired"), or for their key proof
	// ("key_proof": ALPNKeyProof, no valid proof in HELLO).
	AuthFailures map[string]uint64
	// Expired are the live links ended because their token expired.
	Expired uint64
	// Evicted are the sessions the relay ended in a full table to make
	// room for a source (or network) that held fewer than their holder.
	Evicted uint64
	// Detached are the UDP links (counted in Clients) that live on as data
	// packets alone, without a QUIC connection (docs/protocol.md,
	// "Detached links").
	Detached int
	// Parked are the TLS links (counted in Clients) idle now, with no
	// goroutine: the server's watcher holds their connections
	// (ServerConfig.TLSPark); Woken counts the times a parked link's
	// connection had something to read and its read loop started again.
	Parked int
	Woken  uint64
	// Moved are the detached links that moved to a new address of their
	// node (a NAT rebinding), validated by a challenge.
	Moved uint64
	// Sessions are the relay sessions now (ordered pairs of peers with
	// recent packets).
	Sessions int
	// Streams are the relayed streams open now (docs/protocol.md,
	// "Relayed streams"); their bytes count in Bytes.
	Streams int
	// StreamsRefused are the relayed streams the relay refused to open,
	// by reason ("no_peer": the acceptor is not linked, or its link is
	// too new to have said whether it takes streams; "not_stream": its
	// link is not a byte stream or takes none; "not_allowed": no consent
	// yet; "limit": a stream limit; "protocol": a stream number in use).
	StreamsRefused map[string]uint64
	// Packets and Bytes are the packets and payload bytes forwarded.
	Packets, Bytes uint64
	// DataIn and DataOut are the packets that came from and went to UDP
	// links as data packets (not in their QUIC connection's DATAGRAM
	// frames; see docs/protocol.md, Relay data packets).
	DataIn, DataOut uint64
	// Drops are the packets dropped, by reason ("no_peer",
	// "session_limit", "peer_rate", "total_rate", "queue_full",
	// "malformed", "peer_sessions": MaxSessionsPerPeer, "ip_sessions":
	// MaxSessionsPerIP, "not_allowed": no consent from the recipient,
	// "unknown_link": a data packet with no link's token, or not from
	// its link's address, "token_expired": a new session between two
	// links whose tokens expired, ServerConfig.KeepSessionsPastExpiry).
	Drops map[string]uint64
}

// Metrics returns a snapshot of the server's counters and gauges.
func (s *Server) Metrics() MetricsSnapshot {
	s.mu.RLock()
	sessions := s.sessions
	s.mu.RUnlock()
	m := s.m
	snap := MetricsSnapshot{
		Clients:      make(map[string]int, numTransports),
		Connections:  make(map[string]uint64, numTransports),
		Rejected:     make(map[string]uint64, numRejectReasons),
		AuthFailures: make(map[string]uint64, numAuthReasons),
		Expired:      m.expired.Load(),
		Evicted:      m.evicted.Load(),
		Detached:     int(m.detached.Load()),
		Moved:        m.moved.Load(),
		Parked:       int(m.parkedTLS.Load()),
		Woken:        m.wokeTLS.Load(),
		Sessions:     sessions,
		Streams:      s.Streams(),
		Packets:      m.packets.Load(),
		Bytes:        m.bytes.Load(),
		DataIn:       m.dataIn.Load(),
		DataOut:      m.dataOut.Load(),
		Drops:        make(map[string]uint64, numDropReasons),

		StreamsRefused: make(map[string]uint64, len(streamRefusalNames)),
	}
	for code, name := range streamRefusalNames {
		snap.StreamsRefused[name] = m.streamRefused[code].Load()
	}
	for i, name := range transportNames {
		snap.Clients[name] = int(m.clients[i].Load())
		snap.Connections[name] = m.conns[i].Load()
	}
	for i, name := range rejectNames {
		snap.Rejected[name] = m.rejected[i].Load()
	}
	for i, name := range authNames {
		snap.AuthFailures[name] = m.auth[i].Load()
	}
	for i, name := range dropNames {
		snap.Drops[name] = m.drops[i].Load()
	}
	return snap
}

// Stats is a snapshot of a server's state and counters: the totals of
// Metrics.
type Stats struct {
	Clients      int    // peers connected now
	Sessions     int    // relay sessions now
	Streams      int    // relayed streams now
	Packets      uint64 // packets forwarded
	Bytes        uint64 // payload bytes forwarded
	DataIn       uint64 // packets that came as data packets
	DataOut      uint64 // packets that went as data packets
	Drops        uint64 // packets dropped, for any reason
	AuthFailures uint64 // links refused for a bad or expired token
}

// Stats returns a snapshot of the server's counters.
func (s *Server) Stats() Stats {
	s.mu.RLock()
	st := Stats{Clients: len(s.peers), Sessions: s.sessions}
	s.mu.RUnlock()
	st.Streams = s.Streams()
	st.Packets = s.m.packets.Load()
	st.Bytes = s.m.bytes.Load()
	st.DataIn, st.DataOut = s.m.dataIn.Load(), s.m.dataOut.Load()
	for i := range s.m.drops {
		st.Drops += s.m.drops[i].Load()
	}
	for i := range s.m.auth {
		st.AuthFailures += s.m.auth[i].Load()
	}
	return st
}
