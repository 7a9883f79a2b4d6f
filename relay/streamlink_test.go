package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/rendezvous"
)

// dialHello opens a raw TLS link as k from the loopback address ip and
// says hello (frameHello or frameHelloStreams); it returns the link and
// the answer's type and body.
func dialHello(t *testing.T, sa rendezvous.ServerAddr, k *identity.Key, ip string, hello byte) (*rawLink, byte, []byte) {
	t.Helper()
	cfg, _, err := identity.ClientTLSConfig(k, sa.ID, ALPN)
	if err != nil {
		t.Fatal(err)
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	tc, err := tls.DialWithDialer(d, "tcp", sa.TCPHostPort(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	r := &rawLink{id: k.ID(), tc: tc}
	r.write(t, appendFrame(nil, hello))
	tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	typ, body, _, err := readFrame(tc, nil)
	tc.SetReadDeadline(time.Time{})
	if err != nil {
		t.Fatalf("no answer to hello 0x%02x: %v", hello, err)
	}
	return r, typ, body
}

// TestStreamLinkBeside: a streams-only link registers beside its peer's
// link (it does not replace it), is replaced only by a newer streams-only
// link of the peer, opens streams to other peers, and carries nothing
// else: its PACKET frames are dropped, and an OPEN to its peer goes to
// the peer's own link.
func TestStreamLinkBeside(t *testing.T) {
	sa, srv := startStreamRelay(t, ServerConfig{PeerRate: -1, TotalRate: -1})
	k, _ := identity.GenerateKey()
	main := dialRawKey(t, sa, true, k)
	sl, typ, body := dialHello(t, sa, k, "127.0.0.1", frameHelloStreams)
	if typ != frameWelcome || len(body) < 5 || body[4]&welcomeStreams == 0 || body[4]&welcomeConsent != 0 {
		t.Fatalf("streams-only link: answer 0x%02x %x, want WELCOME with streams and without consent", typ, body)
	}
	waitUntil(t, func() bool { return srv.StreamLinks() == 1 })
	if srv.link(k.ID()) == nil || srv.link(k.ID()).streamsOnly {
		t.Fatal("the streams-only link replaced the peer's link")
	}

	// A stream from the streams-only link to another peer, bytes through.
	b := dialRaw(t, sa, true)
	waitUntil(t, func() bool { l := srv.link(b.id); return l != nil && l.streams.Load() })
	sl.write(t, appendStreamFrame(nil, frameOpen, ref(b.id, 1), nil))
	sl.write(t, appendStreamFrame(nil, frameData, ref(b.id, 1), []byte("hello")))
	b.tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	var got []byte
	for len(got) < 5 {
		typ, body, _, err := readFrame(b.tc, nil)
		if err != nil {
			t.Fatalf("the acceptor got %q, then %v", got, err)
		}
		r, rest, _ := parseStream(body)
		if r.peer != k.ID() {
			t.Fatalf("a stream frame from %s, want %s", r.peer.Short(), k.ID().Short())
		}
		if typ == frameData {
			got = append(got, rest...)
		}
	}
	if string(got) != "hello" {
		t.Fatalf("the acceptor got %q, want hello", got)
	}

	// A PACKET from the streams-only link is not forwarded.
	before := srv.Metrics().Drops["malformed"]
	sl.write(t, appendFrame(nil, framePacket, b.id[:], make([]byte, 100)))
	waitUntil(t, func() bool { return srv.Metrics().Drops["malformed"] == before+1 })

	// An OPEN to k reaches k's own link, not the streams-only one.
	b.write(t, appendStreamFrame(nil, frameOpen, ref(k.ID(), 7), nil))
	main.tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		typ, body, _, err := readFrame(main.tc, nil)
		if err != nil {
			t.Fatalf("the peer's own link got no OPEN: %v", err)
		}
		if r, _, _ := parseStream(body); typ == frameOpen && r.peer == b.id {
			break
		}
	}

	// A newer streams-only link replaces the older one, not the peer's link.
	dialHello(t, sa, k, "127.0.0.1", frameHelloStreams)
	sl.tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		typ, body, _, err := readFrame(sl.tc, nil)
		if err != nil {
			t.Fatalf("the older streams-only link was not told it was replaced: %v", err)
		}
		if typ == frameError {
			if body[0] != codeReplaced {
				t.Fatalf("ERROR %d, want replaced", body[0])
			}
			break
		}
	}
	if srv.StreamLinks() != 1 || srv.link(k.ID()) == nil || srv.link(k.ID()).streamsOnly {
		t.Fatalf("after a second streams-only link: %d streams-only links, the peer's link %v", srv.StreamLinks(), srv.link(k.ID()) != nil)
	}
}

// TestStreamLinkLimits: streams-only links count against the relay's
// per-source link limit and its client limit like any link; one past
// either is refused with the named ERROR, and the relay holds no more.
func TestStreamLinkLimits(t *testing.T) {
	sa, srv := startStreamRelay(t, ServerConfig{MaxLinksPerIP: 4, MaxClients: 6, PeerRate: -1, TotalRate: -1})
	for i := range 4 {
		k, _ := identity.GenerateKey()
		if _, typ, _ := dialHello(t, sa, k, "127.0.0.1", frameHelloStreams); typ != frameWelcome {
			t.Fatalf("streams-only link %d: answer 0x%02x, want WELCOME", i, typ)
		}
	}
	k, _ := identity.GenerateKey()
	if _, typ, body := dialHello(t, sa, k, "127.0.0.1", frameHelloStreams); typ != frameError || body[0] != codeRateLimited {
		t.Fatalf("a fifth streams-only link from one source: answer 0x%02x %x, want ERROR rate_limited", typ, body)
	}
	for i := range 2 {
		k, _ := identity.GenerateKey()
		if _, typ, _ := dialHello(t, sa, k, "127.0.0.2", frameHelloStreams); typ != frameWelcome {
			t.Fatalf("streams-only link %d from another source: answer 0x%02x, want WELCOME", i, typ)
		}
	}
	k, _ = identity.GenerateKey()
	if _, typ, body := dialHello(t, sa, k, "127.0.0.3", frameHello); typ != frameError || body[0] != codeFull {
		t.Fatalf("a link beyond MaxClients (6 streams-only links held): answer 0x%02x %x, want ERROR full", typ, body)
	}
	if n := srv.StreamLinks(); n != 6 {
		t.Fatalf("the relay holds %d streams-only links, want 6", n)
	}
}

// TestStreamLinkRefusedWithoutStreams: a relay without relayed streams
// (and one from before streams-only links, which knows no STREAMS-HELLO)
// refuses a streams-only link with ERROR protocol and registers nothing.
func TestStreamLinkRefusedWithoutStreams(t *testing.T) {
	sa, srv := startStreamRelay(t, ServerConfig{MaxStreams: -1})
	k, _ := identity.GenerateKey()
	if _, typ, body := dialHello(t, sa, k, "127.0.0.1", frameHelloStreams); typ != frameError || body[0] != codeProtocol {
		t.Fatalf("answer 0x%02x %x, want ERROR protocol", typ, body)
	}
	if srv.StreamLinks() != 0 || srv.link(k.ID()) != nil {
		t.Fatal("the relay registered the refused link")
	}
}

// TestStreamLinkRefusalRemembered: a client whose streams-only link a
// relay refused (ErrStreamsUnsupported) does not ask that relay again: no
// second attempt reaches it, and dials through it no longer want one.
func TestStreamLinkRefusalRemembered(t *testing.T) {
	sa, srv := startStreamRelay(t, ServerConfig{MaxStreams: -1})
	k, _ := identity.GenerateKey()
	c, err := NewClient(ClientConfig{Key: k, Dialers: []LinkDialer{TLSDialer{}}, Logger: dataLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i := range 2 {
		if _, err := c.streamLink(ctx, sa); !errors.Is(err, ErrStreamsUnsupported) {
			t.Fatalf("attempt %d: %v, want ErrStreamsUnsupported", i, err)
		}
	}
	if n := srv.Metrics().Rejected["handshake"]; n != 1 {
		t.Errorf("the relay refused %d link handshakes, want 1 (the second attempt asked it again)", n)
	}
	if c.streamLinkWanted(sa) {
		t.Error("a dial through the relay that refused still wants a streams-only link")
	}
}

// TestStreamLinkKeptWhileWanted: a streams-only link that carries no
// stream but is asked for again (streamLink: a listener answered
// "streams" to a dialler whose stream comes a forwarding delay later)
// stays up, the same link, as long as it is asked for; once nobody asks
// it closes within its idle time. Before, a link idle for half that time
// closed at the next tick even right after an introduction promised it,
// and the dialler's stream found none.
func TestStreamLinkKeptWhileWanted(t *testing.T) {
	sa, srv := startStreamRelay(t, ServerConfig{PeerRate: -1, TotalRate: -1})
	k, _ := identity.GenerateKey()
	c, err := NewClient(ClientConfig{Key: k, Dialers: []LinkDialer{TLSDialer{}}, Logger: dataLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const idle = time.Second
	c.mu.Lock()
	c.sl.idle = idle
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	first, err := c.streamLink(ctx, sa)
	if err != nil {
		t.Fatal(err)
	}
	// Asked for every 200 ms for three idle times: always the same link,
	// never closed.
	for end := time.Now().Add(3 * idle); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		l, err := c.streamLink(ctx, sa)
		if err != nil {
			t.Fatal(err)
		}
		if l != first || first.Err() != nil {
			t.Fatalf("a streams-only link asked for every 200 ms closed after its idle time %v (err %v): a promised stream would find none", idle, first.Err())
		}
	}
	// Nobody asks: it closes within two idle times, and the relay forgets it.
	waitUntil(t, func() bool { return first.Err() != nil && srv.StreamLinks() == 0 })
}

// TestStreamLinkAcceptsWithConsent: an OPEN to a peer whose own link
// takes no streams goes to its streams-only link, but only with the
// consent of its own link: before the peer allowed the opener the relay
// refuses it (CLOSE not_allowed) and the streams-only link sees nothing;
// after, the OPEN reaches the streams-only link, not the peer's own link.
// Without a streams-only link that takes streams, it is not_stream.
func TestStreamLinkAcceptsWithConsent(t *testing.T) {
	sa, srv := startStreamRelay(t, ServerConfig{PeerRate: -1, TotalRate: -1})
	kb, _ := identity.GenerateKey()
	main := dialRawKey(t, sa, false, kb)
	main.write(t, appendFrame(nil, frameFeatures, []byte{0})) // takes no streams, as a UDP link
	main.write(t, appendFrame(nil, frameAllow))               // consent wanted
	a := dialRaw(t, sa, true)
	waitUntil(t, func() bool {
		l, la := srv.link(kb.ID()), srv.link(a.id)
		if l == nil || la == nil {
			return false
		}
		l.omu.Lock()
		consent := l.consent
		l.omu.Unlock()
		return l.featured.Load() && consent && la.streams.Load()
	})
	a.write(t, appendStreamFrame(nil, frameOpen, ref(kb.ID(), 1), nil))
	if got := a.closes(300 * time.Millisecond); got[closeNotStream] != 1 {
		t.Fatalf("no streams-only link: CLOSE codes %v, want one not_stream", got)
	}

	sl, typ, _ := dialHello(t, sa, kb, "127.0.0.1", frameHelloStreams)
	if typ != frameWelcome {
		t.Fatalf("streams-only link: answer 0x%02x", typ)
	}
	sl.write(t, appendFrame(nil, frameFeatures, []byte{featureStreams}))
	waitUntil(t, func() bool {
		srv.mu.RLock()
		defer srv.mu.RUnlock()
		l := srv.streamLinks[kb.ID()]
		return l != nil && l.streams.Load()
	})
	a.write(t, appendStreamFrame(nil, frameOpen, ref(kb.ID(), 3), nil))
	if got := a.closes(300 * time.Millisecond); got[closeNotAllowed] != 1 {
		t.Fatalf("without the peer's consent: CLOSE codes %v, want one not_allowed", got)
	}
	if opens := countOpens(sl, 200*time.Millisecond); opens != 0 {
		t.Fatalf("the streams-only link got %d OPENs from a peer it did not allow", opens)
	}

	main.write(t, appendFrame(nil, frameAllow, a.id[:]))
	waitUntil(t, func() bool { return srv.link(kb.ID()).consents(a.id, time.Now()) })
	a.write(t, appendStreamFrame(nil, frameOpen, ref(kb.ID(), 5), nil))
	if opens := countOpens(sl, time.Second); opens != 1 {
		t.Fatalf("with the peer's consent the streams-only link got %d OPENs, want 1", opens)
	}
	if opens := countOpens(main, 200*time.Millisecond); opens != 0 {
		t.Fatalf("the peer's own link, which takes no streams, got %d OPENs", opens)
	}
	if n := srv.Streams(); n != 1 {
		t.Fatalf("the relay holds %d streams, want 1", n)
	}
}

// countOpens reads r's frames for d and counts the OPENs.
func countOpens(r *rawLink, d time.Duration) int {
	n := 0
	r.tc.SetReadDeadline(time.Now().Add(d))
	defer r.tc.SetReadDeadline(time.Time{})
	var buf []byte
	for {
		typ, _, b, err := readFrame(r.tc, buf)
		buf = b
		if err != nil {
			return n
		}
		if typ == frameOpen {
			n++
		}
	}
}
