// Package supernode is the rung of reach's ladder between hole punching and
// the hosted relay: a peer with open ports volunteers (opt-in, with limits)
// to forward packets for pairs of peers that cannot punch through, so the
// hosted relay stays small and relaying happens close to the peers.
//
// Volunteer side: a node with Config.Enable runs a Volunteer, a relay.Server
// (the hosted relay's forwarding, reused as it is) that serves relay links
// ("reach-relay/1") accepted on the node's own QUIC listener and socket
// (stream.ListenWith). It offers itself to its rendezvous server, which
// admits it only after dialling it back from a socket of its own (the
// volunteer proves its key in that handshake); see rendezvous.VolunteerOffer.
// Limits: pairs of peers at once, bytes per second per peer and in total,
// and whom it serves: peers holding a token its server issued with the
// introduction (anyone registered there), or an allow-list of peer IDs. At a
// limit it refuses with the relay's named errors (relay.ErrRelayFull), so
// the dialler's race moves on at once.
//
// User side: a dialler that asks gets a short list of volunteers, best first,
// in the introduction's answer (rendezvous.Supernode candidates, each with a
// token); the listener gets the same list in the offer and links to each,
// allowing the dialler: links ask for consent (relay.ClientConfig.Consent),
// so a volunteer forwards to a node only from peers it allowed or dialled. A
// Pool keeps the node's links to volunteers (relay.Client with the UDP link
// from the node's socket), a QUIC transport on each link's relay.PacketConn,
// and the sessions on it. Strategy dials QUIC end to end (ALPN reach/1,
// 1200-byte packets) through the first volunteer that works, with the relay
// rung's own code (relay.Strategy): the volunteer forwards ciphertext only.
//
// A volunteer that vanishes: the links to it carry a short QUIC idle
// timeout (LinkIdleTimeout), so both peers notice within it. Each asks its
// node for another forwarded path for the sessions that ran through it
// (PoolConfig.Rescue: the hosted relay), and those sessions go on there
// with their open streams. Sessions nothing can take are closed with
// ErrVolunteerGone (so streams fail with that named error, never hang).
// Either way the volunteer is skipped for a while, and the node's next dial
// finds another path: another volunteer, TURN or the hosted relay.
package supernode
