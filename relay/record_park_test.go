package relay

import (
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"github.com/reachp2p/reach/internal/tlstake"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/rendezvous"
)

// recordLinkByHand links a node to sa under ALPNRecord by hand (as
// TestRecordTamperedEndsLink): the raw connection and the node's
// records on it, WELCOME read.
func recordLinkByHand(t *testing.T, sa rendezvous.ServerAddr) (net.Conn, *recordConn) {
	t.Helper()
	k := genKey(t)
	cfg, _, err := identity.ClientTLSConfig(k, sa.ID, ALPNRecord)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := net.Dial("tcp", sa.TCPHostPort())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	bounded := tlstake.NewBounded(raw)
	tc := tls.Client(bounded, cfg)
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol != ALPNRecord {
		t.Fatalf("ALPN %q, want %q", cs.NegotiatedProtocol, ALPNRecord)
	}
	proof, err := appendKeyProof(nil, k, cs)
	if err != nil {
		t.Fatal(err)
	}
	if err := helloAnswer(t, tc, proof); err != nil {
		t.Fatal(err)
	}
	raw.SetDeadline(time.Time{})
	in, out, err := newRecordDirs(cs, false)
	if err != nil {
		t.Fatal(err)
	}
	return raw, newRecordConn(raw, in, out)
}

// TestRecordParkTrickle (review of issue 14): a parked link under
// ALPNRecord whose node trickles a record that never completes (of
// 16,128 bytes, a byte every 150 ms) holds its read loop and buffer no longer
// than IdleTimeout after its last frame: it is ended then, having been
// woken.
func TestRecordParkTrickle(t *testing.T) {
	const idle = 2 * time.Second
	srv, sa, _ := dataServerConfig(t, ServerConfig{IdleTimeout: idle, TLSPark: 50 * time.Millisecond}, nil)
	raw, _ := recordLinkByHand(t, sa)
	linked := time.Now()
	waitUntil(t, func() bool { return srv.Metrics().Parked == 1 })
	raw.Write([]byte{0x3f, 0x00}) // a record of 16,128 bytes (a length it takes)
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		raw.SetReadDeadline(time.Now().Add(3 * idle))
		io.Copy(io.Discard, raw)
	}()
	for tick := time.NewTicker(150 * time.Millisecond); ; {
		select {
		case <-ended:
			took := time.Since(linked)
			if took < idle/2 || took > 2*idle || srv.Metrics().Woken == 0 {
				t.Fatalf("ended after %v (IdleTimeout %v), %d wake-ups", took, idle, srv.Metrics().Woken)
			}
			t.Logf("a link trickling a record ended %v after its last frame (IdleTimeout %v), %d wake-ups",
				took.Round(time.Millisecond), idle, srv.Metrics().Woken)
			return
		case <-tick.C:
			raw.Write([]byte{0})
		}
		if time.Since(linked) > 3*idle {
			t.Fatalf("still linked %v after its last frame (IdleTimeout %v)", time.Since(linked), idle)
		}
	}
}

// TestRecordParkGarbage (review of issue 14): a parked link under
// ALPNRecord woken by bytes that are no record (a length below a tag's)
// ends at once with ERROR protocol in a record, then EOF.
func TestRecordParkGarbage(t *testing.T) {
	srv, sa, _ := dataServerConfig(t, ServerConfig{TLSPark: 50 * time.Millisecond}, nil)
	raw, rc := recordLinkByHand(t, sa)
	waitUntil(t, func() bool { return srv.Metrics().Parked == 1 })
	woken := srv.Metrics().Woken
	raw.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := raw.Write([]byte{0x00, 0x05, 1, 2, 3, 4, 5}); err != nil {
		t.Fatal(err)
	}
	typ, body, _, err := readFrame(rc, nil)
	if err != nil || typ != frameError || len(body) < 1 || body[0] != codeProtocol {
		t.Fatalf("after garbage: 0x%02x %q %v; want ERROR protocol", typ, body, err)
	}
	if _, _, _, err := readFrame(rc, nil); err != io.EOF {
		t.Fatalf("after ERROR: %v, want EOF", err)
	}
	if srv.Metrics().Woken == woken {
		t.Fatal("the link was not parked when the garbage came")
	}
	waitUntil(t, func() bool { return srv.Metrics().Parked == 0 })
}
