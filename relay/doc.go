// Package relay is the last rung of reach's ladder: a hosted relay that
// forwards packets between peers addressed by peer ID, so that two peers
// that cannot reach each other (both behind symmetric NATs, or one on a
// network that blocks UDP) still get a session. The QUIC session between
// the peers runs end to end through the relay: it forwards ciphertext and
// never sees a key.
//
// Server side: a Server is handed the connections that negotiated ALPN
// ("reach-relay/1") on the rendezvous server's ports (rendezvous
// ServerConfig.Protocols): QUIC on the UDP port, TLS on the TCP ports (443
// where it may bind it). Peers prove their Ed25519 key in the TLS
// handshake, or on byte-stream links in HELLO (ALPNKeyProof, a signature
// over the TLS exporter: the server then keeps no certificate); only
// connected peers can be reached, never arbitrary addresses. An idle TLS
// link parks (ServerConfig.TLSPark): no goroutine holds it until its
// connection has something to read. Limits and tokens (NewToken, CheckToken) are in ServerConfig.
// The server counts what it forwards, drops and refuses in plain atomics
// (Server.Metrics, Server.Stats); package relay/relaymetrics exports them
// to Prometheus, so this package links no metrics library.
//
// Client side: a Client keeps a node's Link to the relay. Links are
// pluggable (LinkDialer): UDPDialer (QUIC DATAGRAM frames from the node's
// shared socket) and TLSDialer (TLS over TCP) race, UDP first; any
// reliable byte stream (a WebSocket, an HTTP CONNECT tunnel) becomes a
// link through NewStreamLink. On top of the link, PacketConn is a
// net.PacketConn whose addresses are peer IDs (Addr); the node runs a
// second quic.Transport on it for relayed sessions, with 1200-byte packets
// (PacketSize) so each fits in one datagram. Strategy is the rung.
//
// The wire protocol is in docs/protocol.md (Relay); the design, and how a
// relayed session could later move to a direct path, in
// docs/architecture.md.
package relay
