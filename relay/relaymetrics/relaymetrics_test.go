package relaymetrics_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/quic-go/quic-go"
	"go.uber.org/goleak"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/relay/relaymetrics"
	"github.com/reachp2p/reach/rendezvous"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// scrape serves reg's /metrics the way reach server does and checks the
// text exposition is want.
func scrape(t *testing.T, reg *prometheus.Registry, want string) {
	t.Helper()
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.PanicOnError}).
		ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if got := rec.Body.String(); got != want {
		t.Errorf("scraped:\n%s\nwant:\n%s", got, want)
	}
}

// expected is the reach_relay_ exposition for the given values: names,
// help texts, types and labels exactly as reach server has exported them.
func expected(udp, tls, sessions, packets, bytes, noPeer, expired int) string {
	return fmt.Sprintf(`# HELP reach_relay_auth_failures_total Relay links refused for their token, by reason (bad_token, token_expired), or for their key proof (key_proof).
# TYPE reach_relay_auth_failures_total counter
reach_relay_auth_failures_total{reason="bad_token"} 0
reach_relay_auth_failures_total{reason="key_proof"} 0
reach_relay_auth_failures_total{reason="token_expired"} %[7]d
# HELP reach_relay_bytes_total Payload bytes forwarded.
# TYPE reach_relay_bytes_total counter
reach_relay_bytes_total %[5]d
# HELP reach_relay_clients Peers connected to the relay, by link transport.
# TYPE reach_relay_clients gauge
reach_relay_clients{transport="tls"} %[2]d
reach_relay_clients{transport="udp"} %[1]d
# HELP reach_relay_connections_total Relay links accepted, by transport.
# TYPE reach_relay_connections_total counter
reach_relay_connections_total{transport="tls"} %[2]d
reach_relay_connections_total{transport="udp"} %[1]d
# HELP reach_relay_data_packets_total Packets that came from (in) or went to (out) UDP links as data packets rather than QUIC DATAGRAM frames.
# TYPE reach_relay_data_packets_total counter
reach_relay_data_packets_total{direction="in"} 0
reach_relay_data_packets_total{direction="out"} 0
# HELP reach_relay_detached_links UDP relay links that live on as data packets alone, without a QUIC connection (counted in reach_relay_clients).
# TYPE reach_relay_detached_links gauge
reach_relay_detached_links 0
# HELP reach_relay_drops_total Packets dropped, by reason (no_peer, session_limit, peer_rate, total_rate, queue_full, malformed, peer_sessions, ip_sessions, not_allowed, unknown_link, token_expired).
# TYPE reach_relay_drops_total counter
reach_relay_drops_total{reason="ip_sessions"} 0
reach_relay_drops_total{reason="malformed"} 0
reach_relay_drops_total{reason="no_peer"} %[6]d
reach_relay_drops_total{reason="not_allowed"} 0
reach_relay_drops_total{reason="peer_rate"} 0
reach_relay_drops_total{reason="peer_sessions"} 0
reach_relay_drops_total{reason="queue_full"} 0
reach_relay_drops_total{reason="session_limit"} 0
reach_relay_drops_total{reason="token_expired"} 0
reach_relay_drops_total{reason="total_rate"} 0
reach_relay_drops_total{reason="unknown_link"} 0
# HELP reach_relay_packets_total Packets forwarded.
# TYPE reach_relay_packets_total counter
reach_relay_packets_total %[4]d
# HELP reach_relay_parked_tls_links TLS relay links idle now without a goroutine, their connections held by the server's watcher (counted in reach_relay_clients).
# TYPE reach_relay_parked_tls_links gauge
reach_relay_parked_tls_links 0
# HELP reach_relay_rejected_total Relay links refused before registration, by reason (full, rate_limited, handshake, ip_links).
# TYPE reach_relay_rejected_total counter
reach_relay_rejected_total{reason="full"} 0
reach_relay_rejected_total{reason="handshake"} 0
reach_relay_rejected_total{reason="ip_links"} 0
reach_relay_rejected_total{reason="rate_limited"} 0
# HELP reach_relay_sessions Relay sessions (ordered pairs of peers with recent packets).
# TYPE reach_relay_sessions gauge
reach_relay_sessions %[3]d
# HELP reach_relay_sessions_evicted_total Relay sessions ended in a full session table to make room for a source or network that held fewer.
# TYPE reach_relay_sessions_evicted_total counter
reach_relay_sessions_evicted_total 0
# HELP reach_relay_streams Relayed streams open (two peers both on byte-stream links).
# TYPE reach_relay_streams gauge
reach_relay_streams 0
# HELP reach_relay_streams_refused_total Relayed streams the relay refused to open, by reason (no_peer, not_stream, not_allowed, limit, protocol).
# TYPE reach_relay_streams_refused_total counter
reach_relay_streams_refused_total{reason="limit"} 0
reach_relay_streams_refused_total{reason="no_peer"} 0
reach_relay_streams_refused_total{reason="not_allowed"} 0
reach_relay_streams_refused_total{reason="not_stream"} 0
reach_relay_streams_refused_total{reason="protocol"} 0
# HELP reach_relay_tls_wakeups_total Times a parked TLS link's connection had something to read and its read loop started again.
# TYPE reach_relay_tls_wakeups_total counter
reach_relay_tls_wakeups_total 0
# HELP reach_relay_token_expired_total Live relay links ended because their token expired.
# TYPE reach_relay_token_expired_total counter
reach_relay_token_expired_total 0
`, udp, tls, sessions, packets, bytes, noPeer, expired)
}

// handler counts what a link receives.
type handler struct {
	packets, bytes atomic.Int64
	got            chan struct{} // a value per packet
	notices        chan error
}

func newHandler() *handler {
	return &handler{got: make(chan struct{}, 1024), notices: make(chan error, 16)}
}

func (h *handler) Packet(_ identity.PeerID, pkt []byte) {
	h.packets.Add(1)
	h.bytes.Add(int64(len(pkt)))
	h.got <- struct{}{}
}

func (h *handler) Notice(_ identity.PeerID, err error) {
	select {
	case h.notices <- err:
	default:
	}
}

// TestCollector: a relay with one UDP and one TLS link forwards packets
// from one to the other, drops one to a peer that is not linked and
// refuses an expired token; the scrape says exactly that, and agrees with
// Server.Metrics. A fresh server exports every label value at zero.
func TestCollector(t *testing.T) {
	rl := relay.NewServer(relay.ServerConfig{
		TLSPark: -1, // the scrape is exact: no link parks meanwhile
		Authorize: func(_ identity.PeerID, token string) (time.Time, error) {
			if token == "expired" {
				return time.Time{}, relay.ErrTokenExpired
			}
			return time.Time{}, nil
		},
	})
	reg := prometheus.NewPedanticRegistry()
	if err := relaymetrics.Register(reg, rl); err != nil {
		t.Fatal(err)
	}
	if err := relaymetrics.Register(reg, nil); !errors.Is(err, relaymetrics.ErrNoServer) {
		t.Errorf("Register(nil server) = %v, want ErrNoServer", err)
	}
	scrape(t, reg, expected(0, 0, 0, 0, 0, 0, 0)) // a fresh server

	rs, err := rendezvous.StartServer(context.Background(), rendezvous.ServerConfig{
		Protocols: map[string]rendezvous.Protocol{relay.ALPN: rl},
	}, netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	sa, err := rendezvous.ParseServerAddr(rs.ConnectString())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// a links over TLS, b over UDP.
	ka, _ := identity.GenerateKey()
	kb, _ := identity.GenerateKey()
	ha, hb := newHandler(), newHandler()
	la, err := relay.TLSDialer{}.DialLink(ctx, relay.LinkParams{Server: sa, Key: ka, Handler: ha})
	if err != nil {
		t.Fatal(err)
	}
	defer la.Close()
	uc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	qt := &quic.Transport{Conn: uc}
	defer qt.Close()
	lb, err := relay.UDPDialer{Socket: qt}.DialLink(ctx, relay.LinkParams{Server: sa, Key: kb, Handler: hb})
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	// A link whose token the relay refuses.
	kc, _ := identity.GenerateKey()
	if _, err := (relay.TLSDialer{}).DialLink(ctx, relay.LinkParams{Server: sa, Key: kc, Token: "expired", Handler: newHandler()}); !errors.Is(err, relay.ErrTokenExpired) {
		t.Fatalf("expired token: %v, want ErrTokenExpired", err)
	}

	// a -> b: the TLS link is reliable and ordered, so all arrive.
	const n, size = 20, 1000
	for range n {
		if err := la.Send(kb.ID(), make([]byte, size)); err != nil {
			t.Fatal(err)
		}
	}
	for range n {
		select {
		case <-hb.got:
		case <-ctx.Done():
			t.Fatalf("b got %d of %d packets", hb.packets.Load(), n)
		}
	}
	// a -> a peer that is not linked: dropped, and a hears why.
	other, _ := identity.GenerateKey()
	if err := la.Send(other.ID(), []byte("hello?")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-ha.notices:
		if !errors.Is(err, relay.ErrPeerNotConnected) {
			t.Errorf("notice %v, want ErrPeerNotConnected", err)
		}
	case <-ctx.Done():
		t.Fatal("no notice for the packet to a peer that is not linked")
	}

	scrape(t, reg, expected(1, 1, 1, n, n*size, 1, 1))
	m := rl.Metrics()
	if m.Packets != n || m.Bytes != n*size || m.Drops["no_peer"] != 1 || m.AuthFailures["token_expired"] != 1 ||
		m.Clients["udp"] != 1 || m.Clients["tls"] != 1 || m.Sessions != 1 {
		t.Errorf("Metrics() = %+v", m)
	}
	st := rl.Stats()
	if st.Packets != m.Packets || st.Bytes != m.Bytes || st.Drops != 1 || st.AuthFailures != 1 {
		t.Errorf("Stats() = %+v, Metrics() = %+v", st, m)
	}
}
