package rendezvous

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
)

// rawTLS opens an authenticated TLS signalling connection without the
// client, to send arbitrary bytes.
func rawTLS(t *testing.T, rs *RunningServer, key *identity.Key) *tls.Conn {
	t.Helper()
	cfg, _, err := identity.ClientTLSConfig(key, rs.ID(), ALPN)
	if err != nil {
		t.Fatal(err)
	}
	d := tls.Dialer{Config: cfg}
	c, err := d.DialContext(testCtx(t, 5*time.Second), "tcp", rs.TCPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	return c.(*tls.Conn)
}

func frame(t msgType, body string) []byte {
	b := []byte{frameVersion, byte(t), 0, 0}
	binary.BigEndian.PutUint16(b[2:], uint16(len(body)))
	return append(b, body...)
}

// readError reads frames until an ERROR frame and returns its code; it
// also checks that the server then closes the connection.
func readError(t *testing.T, c io.Reader) string {
	t.Helper()
	fr := newFrameReader(c, maxFrameBody)
	for {
		typ, body, err := fr.next()
		if err != nil {
			t.Fatalf("reading ERROR frame: %v", err)
		}
		if typ != typeError {
			continue
		}
		var eb errorBody
		if err := decodeBody(typ, body, &eb); err != nil {
			t.Fatal(err)
		}
		if _, _, err := fr.next(); err == nil {
			t.Errorf("connection still open after ERROR %s", eb.Code)
		}
		return eb.Code
	}
}

// checkServes proves the server still introduces peers.
func checkServes(t *testing.T, rs *RunningServer) {
	t.Helper()
	servers := []ServerAddr{rs.ServerAddr()}
	kb := mustKey(t)
	b := startClient(t, "b", kb, servers, newTransport(t))
	answerAll(t, b)
	a := startClient(t, "a", mustKey(t), servers, newTransport(t))
	if _, err := a.Connect(testCtx(t, 5*time.Second), kb.ID(), PeerInfo{}); err != nil {
		t.Fatalf("server no longer serves: %v", err)
	}
	a.Close()
	b.Close()
}

func TestMalformedFrames(t *testing.T) {
	rs := startTestServer(t, ServerConfig{MaxFrameSize: 1024})
	reg := frame(typeRegister, "{}")
	for _, tc := range []struct {
		name string
		send []byte
		want string
	}{
		{"bad-version", []byte{9, byte(typeRegister), 0, 2, '{', '}'}, codeBadVersion},
		{"oversize", []byte{frameVersion, byte(typeRegister), 0xff, 0xff}, codeFrameTooLarge},
		{"oversize-after-register", append(reg, frameVersion, byte(typeConnect), 0x04, 0x01), codeFrameTooLarge},
		{"unknown-type", append(reg, frame(0x42, "{}")...), codeUnknownType},
		{"type-zero", frame(0, ""), codeUnknownType},
		{"not-json", append(reg, frame(typeConnect, "{nope")...), codeBadBody},
		{"json-array", append(reg, frame(typeConnect, "[1,2]")...), codeBadBody},
		{"bad-peer-id", append(reg, frame(typeConnect, `{"id":1,"target":"xyz"}`)...), codeBadBody},
		{"first-not-register", frame(typePing, ""), codeUnexpected},
		{"server-only-type", append(reg, frame(typeIntro, "{}")...), codeUnexpected},
		{"register-twice", append(reg, reg...), codeUnexpected},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := rawTLS(t, rs, mustKey(t))
			if _, err := c.Write(tc.send); err != nil {
				t.Fatal(err)
			}
			if got := readError(t, c); got != tc.want {
				t.Errorf("ERROR code %q, want %q", got, tc.want)
			}
		})
	}
	if st := rs.Stats(); st.ProtocolErrors != 11 {
		t.Errorf("ProtocolErrors = %d, want 11", st.ProtocolErrors)
	}
	checkServes(t, rs)
}

func TestExtensionFramesSkipped(t *testing.T) {
	rs := startTestServer(t, ServerConfig{})
	c := rawTLS(t, rs, mustKey(t))
	msg := frame(typeRegister, `{"agent":"future","new_field":[1,2,3]}`)
	msg = append(msg, frame(0x90, "opaque \x00\xff bytes, not even JSON")...)
	msg = append(msg, frame(typePing, `{"seq":5}`)...)
	c.Write(msg)
	fr := newFrameReader(c, maxFrameBody)
	for _, want := range []msgType{typeRegistered, typePong} {
		typ, body, err := fr.next()
		if err != nil || typ != want {
			t.Fatalf("got %v %s %v, want %v", typ, body, err, want)
		}
		if typ == typePong && string(body) != `{"seq":5}` {
			t.Errorf("PONG body %s", body)
		}
	}
}

func TestOversizeFrameOverQUIC(t *testing.T) {
	rs := startTestServer(t, ServerConfig{})
	cfg, _, _ := identity.ClientTLSConfig(mustKey(t), rs.ID(), ALPN)
	tr := newTransport(t)
	qc, err := tr.Dial(testCtx(t, 5*time.Second), net.UDPAddrFromAddrPort(rs.UDPAddr()), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer qc.CloseWithError(0, "")
	st, err := qc.OpenStreamSync(testCtx(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	st.Write(append(frame(typeRegister, ""), frameVersion, byte(typeConnect), 0xff, 0xff))
	st.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = io.ReadAll(st)
	if err == nil {
		// The stream's FIN (after the ERROR frame) may arrive before the
		// CONNECTION_CLOSE: then the connection's end says why.
		select {
		case <-qc.Context().Done():
			err = context.Cause(qc.Context())
		case <-time.After(5 * time.Second):
		}
	}
	var ae *quic.ApplicationError
	if !errors.As(err, &ae) || ae.ErrorMessage != codeFrameTooLarge || ae.ErrorCode != quicCodeProtocol {
		t.Fatalf("stream ended with %v, want CONNECTION_CLOSE %s", err, codeFrameTooLarge)
	}
	checkServes(t, rs)
}

func TestGarbageTCP(t *testing.T) {
	rs := startTestServer(t, ServerConfig{HandshakeTimeout: 500 * time.Millisecond})
	for _, junk := range [][]byte{
		[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		{0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3},
		randBytes(4096),
		nil, // connects and says nothing
	} {
		c, err := net.Dial("tcp", rs.TCPAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Write(junk)
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		_, err = io.ReadAll(c)
		c.Close()
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("server kept a garbage connection (%d bytes) open", len(junk))
		}
	}
	// A TLS client that proves a key but does not speak our ALPN.
	cfg, _, _ := identity.ClientTLSConfig(mustKey(t), rs.ID())
	if c, err := tls.Dial("tcp", rs.TCPAddr().String(), cfg); err == nil {
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Error("server talked to a client without ALPN")
		}
		c.Close()
	}
	waitFor(t, "handshake failures counted", func() bool { return rs.Stats().FailedHandshakes >= 4 })
	checkServes(t, rs)
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func stunRequest(t *testing.T, c *net.UDPConn, to netip.AddrPort) (netip.AddrPort, error) {
	t.Helper()
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	if _, err := c.WriteToUDPAddrPort(req.Raw, to); err != nil {
		return netip.AddrPort{}, err
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 1500)
	var resp *stun.Message
	for resp == nil {
		n, err := c.Read(buf)
		if err != nil {
			return netip.AddrPort{}, err
		}
		if !stun.IsMessage(buf[:n]) {
			continue // e.g. QUIC version negotiation for junk we sent
		}
		resp = &stun.Message{Raw: buf[:n]}
		if err := resp.Decode(); err != nil {
			return netip.AddrPort{}, err
		}
	}
	if resp.Type != stun.BindingSuccess || resp.TransactionID != req.TransactionID {
		t.Fatalf("response %v", resp)
	}
	if err := stun.Fingerprint.Check(resp); err != nil {
		t.Fatalf("fingerprint: %v", err)
	}
	var xa stun.XORMappedAddress
	if err := xa.GetFrom(resp); err != nil {
		return netip.AddrPort{}, err
	}
	ip, _ := netip.AddrFromSlice(xa.IP)
	return netip.AddrPortFrom(ip.Unmap(), uint16(xa.Port)), nil
}

func TestSTUN(t *testing.T) {
	rs := startTestServer(t, ServerConfig{})
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := stunRequest(t, c, rs.UDPAddr())
	if err != nil {
		t.Fatal(err)
	}
	if want := addrPortOf(c.LocalAddr()); got != want {
		t.Errorf("XOR-MAPPED-ADDRESS %v, want %v", got, want)
	}
}

func TestSTUNDualStackUnmapped(t *testing.T) {
	rs, err := StartServer(context.Background(), ServerConfig{Logger: testLogger(t, "server")}, netip.MustParseAddrPort("[::]:0"))
	if err != nil {
		t.Skipf("no dual-stack socket here: %v", err)
	}
	defer rs.Close()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := stunRequest(t, c, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), rs.UDPAddr().Port()))
	if err != nil {
		t.Fatal(err)
	}
	if want := addrPortOf(c.LocalAddr()); got != want || !got.Addr().Is4() {
		t.Errorf("XOR-MAPPED-ADDRESS %v, want %v (IPv4, not v4-mapped)", got, want)
	}
}

func TestRandomUDP(t *testing.T) {
	rs := startTestServer(t, ServerConfig{})
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	to := rs.UDPAddr()
	stunHdr := stun.MustBuild(stun.TransactionID, stun.BindingRequest).Raw
	badLen := append([]byte(nil), stunHdr...)
	binary.BigEndian.PutUint16(badLen[2:], 400)                                        // claims attributes it lacks
	badAttr := append(append([]byte(nil), stunHdr[:20]...), 0x00, 0x20, 0x00, 0x08, 1) // truncated XOR-MAPPED-ADDRESS
	binary.BigEndian.PutUint16(badAttr[2:], uint16(len(badAttr)-20))
	indication := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodBinding, stun.ClassIndication)).Raw
	badFP := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint).Raw
	badFP[len(badFP)-1] ^= 0xff
	nonQUIC := [][]byte{{0x00}, {0x3a, 1, 2, 3}, stunHdr[:19], badLen, badAttr, indication, badFP}
	for range 50 {
		b := randBytes(1 + int(randBytes(1)[0]))
		b[0] &= 0x3f // non-QUIC space
		if b[0] == parkToServer && len(b) == parkDatagramLen {
			b = append(b, 0) // not a keepalive's size: it would get an unknown-token hint
		}
		nonQUIC = append(nonQUIC, b)
	}
	// In batches: quic-go queues at most 32 non-QUIC packets for us.
	for i, b := range nonQUIC {
		c.WriteToUDPAddrPort(b, to)
		if i%16 == 15 || i == len(nonQUIC)-1 {
			// Counted as dropped, or (first byte 0x2e: a park keepalive's,
			// parking being on by default) as bad keepalives.
			waitFor(t, "non-QUIC datagrams dropped", func() bool {
				st := rs.Stats()
				return st.DroppedPackets+st.BadKeepalives == uint64(i+1)
			})
		}
	}
	c.WriteToUDPAddrPort(nil, to) // empty: quic-go drops it before us
	for range 50 {                // QUIC-looking junk: quic-go's problem, must not hurt us
		b := randBytes(1200)
		b[0] |= 0xc0
		c.WriteToUDPAddrPort(b, to)
	}
	if _, err := stunRequest(t, c, to); err != nil {
		t.Fatalf("STUN after junk: %v", err)
	}
	checkServes(t, rs)
}

func TestIdlePeerDropped(t *testing.T) {
	rs := startTestServer(t, ServerConfig{IdleTimeout: 500 * time.Millisecond})
	kb := mustKey(t)
	c := rawTLS(t, rs, kb)
	c.Write(frame(typeRegister, ""))
	waitFor(t, "registration", func() bool { return rs.Stats().Peers == 1 })
	// c never pings: the server must drop it.
	waitFor(t, "silent peer dropped", func() bool { return rs.Stats().Peers == 0 })
	a := startClient(t, "a", mustKey(t), []ServerAddr{rs.ServerAddr()}, newTransport(t))
	if _, err := a.Connect(testCtx(t, 5*time.Second), kb.ID(), PeerInfo{}); !errors.Is(err, ErrPeerOffline) {
		t.Errorf("Connect to dropped peer: %v, want ErrPeerOffline", err)
	}
}

func TestServerLimits(t *testing.T) {
	rs := startTestServer(t, ServerConfig{MaxPeers: 2, MaxPendingIntros: 1, IntroTimeout: time.Second})
	servers := []ServerAddr{rs.ServerAddr()}
	a := startClient(t, "a", mustKey(t), servers, newTransport(t))
	kb := mustKey(t)
	startClient(t, "b", kb, servers, newTransport(t)) // never answers
	c := newTestClient(t, "c", mustKey(t), servers, newTransport(t))
	if err := c.Start(testCtx(t, 5*time.Second)); !errors.Is(err, ErrBusy) {
		t.Errorf("third peer: %v, want ErrBusy", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := a.Connect(testCtx(t, 5*time.Second), kb.ID(), PeerInfo{})
		done <- err
	}()
	waitFor(t, "first introduction", func() bool { return rs.Stats().Introductions == 1 })
	if _, err := a.Connect(testCtx(t, 5*time.Second), kb.ID(), PeerInfo{}); !errors.Is(err, ErrBusy) {
		t.Errorf("second pending introduction: %v, want ErrBusy", err)
	}
	if err := <-done; !errors.Is(err, ErrTimeout) {
		t.Errorf("first: %v, want ErrTimeout", err)
	}
}

func TestFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	for _, f := range []struct {
		t    msgType
		body any
	}{
		{typePing, pingBody{Seq: 3}},
		{0xfe, map[string]int{"x": 1}},
		{typeConnect, connectBody{ID: 9, Target: mustKey(t).ID(), Offer: PeerInfo{Candidates: []Candidate{{Addr: netip.MustParseAddrPort("[2001:db8::1]:5"), Kind: Host}}}}},
		{typePong, nil},
	} {
		b, err := appendFrame(nil, f.t, f.body)
		if err != nil {
			t.Fatal(err)
		}
		buf.Write(b)
	}
	fr := newFrameReader(&buf, 0)
	want := []msgType{typePing, typeConnect, typePong}
	for _, w := range want {
		typ, body, err := fr.next()
		if err != nil || typ != w {
			t.Fatalf("got %v %v, want %v", typ, err, w)
		}
		if typ == typeConnect {
			var cb connectBody
			if err := decodeBody(typ, body, &cb); err != nil || cb.ID != 9 || cb.Offer.Candidates[0].Addr.Port() != 5 {
				t.Errorf("connect body %+v %v", cb, err)
			}
		}
	}
	if _, _, err := fr.next(); err != io.EOF {
		t.Errorf("end: %v", err)
	}
	if _, err := appendFrame(nil, typePing, string(make([]byte, 70000))); !errors.Is(err, ErrProtocol) {
		t.Errorf("oversize encode: %v", err)
	}
}
