package relay

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"testing"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/rendezvous"
)

// proofConn opens a TLS connection to the relay under ALPNKeyProof as k
// (no client certificate is asked for or sent).
func proofConn(t *testing.T, sa rendezvous.ServerAddr, k *identity.Key) *tls.Conn {
	t.Helper()
	cfg, _, err := identity.ClientTLSConfig(k, sa.ID, ALPNKeyProof)
	if err != nil {
		t.Fatal(err)
	}
	tc, err := tls.Dial("tcp", sa.TCPHostPort(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	if np := tc.ConnectionState().NegotiatedProtocol; np != ALPNKeyProof {
		t.Fatalf("negotiated %q, want %q", np, ALPNKeyProof)
	}
	return tc
}

// helloAnswer sends HELLO with body on tc and returns the relay's answer:
// nil for WELCOME, else the error of its ERROR frame.
func helloAnswer(t *testing.T, tc *tls.Conn, body []byte) error {
	t.Helper()
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := tc.Write(appendFrame(nil, frameHello, body)); err != nil {
		t.Fatal(err)
	}
	typ, b, _, err := readFrame(tc, nil)
	switch {
	case err != nil:
		t.Fatalf("no answer to HELLO: %v", err)
	case typ == frameWelcome:
		return nil
	case typ == frameError && len(b) >= 1:
		return &ServerError{Code: b[0], Reason: string(b[1:])}
	}
	t.Fatalf("answer to HELLO: frame 0x%02x", typ)
	return nil
}

func genKey(t *testing.T) *identity.Key {
	k, err := identity.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestKeyProofLinks (issue 14): a node's TLS link proves its key in HELLO
// (ALPNKeyProof): the relay keeps no certificate for it, knows it by the
// proved key, and forwards between it and an old-style link (certificate,
// ALPN), which still links.
func TestKeyProofLinks(t *testing.T) {
	srv, sa, _ := dataServerConfig(t, ServerConfig{}, nil)
	ka := genKey(t)
	in := make(chan []byte, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l, err := TLSDialer{}.DialLink(ctx, LinkParams{Server: sa, Key: ka, Handler: chanHandler(in), Logger: dataLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	old := dialRaw(t, sa, false) // identity.ClientTLSConfig(..., ALPN): a certificate
	var pa, po *peerLink
	waitUntil(t, func() bool { pa, po = srv.link(ka.ID()), srv.link(old.id); return pa != nil && po != nil })
	// (ALPNRecord: the relay keeps no TLS connection at all, records.)
	if !pa.tls.proof || pa.tls.in == nil {
		t.Fatalf("new link: in-band proof %v, records %v; want both", pa.tls.proof, pa.tls.in != nil)
	}
	waitUntil(t, func() bool { return !pa.tls.keepsTLS() }) // once HELLO's handling is over
	if po.tls.proof || len(po.tls.tc.ConnectionState().PeerCertificates) != 1 {
		t.Fatalf("old-style link: in-band proof %v, %d certificates; want its certificate", po.tls.proof,
			len(po.tls.tc.ConnectionState().PeerCertificates))
	}
	// old → new and new → old.
	old.write(t, appendFrame(nil, framePacket, idBytes(ka), []byte("from the old link")))
	select {
	case got := <-in:
		if string(got) != "from the old link" {
			t.Fatalf("got %q", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("nothing reached the new link")
	}
	if err := l.Send(old.id, []byte("from the new link")); err != nil {
		t.Fatal(err)
	}
	old.tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		typ, body, _, err := readFrame(old.tc, nil)
		if err != nil {
			t.Fatalf("old link: %v", err)
		}
		if typ == framePacket {
			if !bytes.Equal(body[:identityLen], idBytes(ka)) || string(body[identityLen:]) != "from the new link" {
				t.Fatalf("old link got %q from %x", body[identityLen:], body[:identityLen])
			}
			break
		}
	}
}

func idBytes(k *identity.Key) []byte {
	id := k.ID()
	return id[:]
}

// chanHandler hands packets to a channel.
type chanHandler chan []byte

func (h chanHandler) Packet(_ identity.PeerID, pkt []byte) {
	select {
	case h <- bytes.Clone(pkt):
	default:
	}
}
func (chanHandler) Notice(identity.PeerID, error) {}

// TestKeyProofRefused: under ALPNKeyProof, a HELLO without a proof, with
// a signature by another key, or with a proof made on another connection
// (replayed) is refused with ERROR key_proof (ErrKeyProof at the node,
// counted key_proof), and links nothing; the replayed proof was good on
// its own connection.
func TestKeyProofRefused(t *testing.T) {
	srv, sa, _ := dataServerConfig(t, ServerConfig{}, nil)
	refused := 0
	check := func(what string, err error, k *identity.Key) {
		t.Helper()
		refused++
		if !errors.Is(err, ErrKeyProof) {
			t.Fatalf("%s: %v, want ErrKeyProof", what, err)
		}
		if n := srv.Metrics().AuthFailures["key_proof"]; n != uint64(refused) {
			t.Fatalf("%s: %d counted key_proof, want %d", what, n, refused)
		}
		if srv.link(k.ID()) != nil {
			t.Fatalf("%s: linked", what)
		}
		t.Logf("%s: %v", what, err)
	}

	k := genKey(t)
	check("missing", helloAnswer(t, proofConn(t, sa, k), nil), k)
	tc := proofConn(t, sa, k)
	check("short", helloAnswer(t, tc, idBytes(k)), k)

	// Another key's signature over this connection's exporter, under k's ID.
	tc = proofConn(t, sa, k)
	other := genKey(t)
	msg, err := keyProofMessage(tc.ConnectionState())
	if err != nil {
		t.Fatal(err)
	}
	forged := append(idBytes(k), other.Sign(msg)...)
	check("wrong signature", helloAnswer(t, tc, forged), k)

	// A small-order ID (the identity point, 01 00…00) with the signature
	// that Go's ed25519.Verify accepts for it over any message: no node
	// holds such a key, and it links nobody.
	weakID := make([]byte, identityLen)
	weakID[0] = 1
	weakSig := make([]byte, 64)
	weakSig[0] = 1
	tc = proofConn(t, sa, k)
	if err := helloAnswer(t, tc, append(append([]byte(nil), weakID...), weakSig...)); !errors.Is(err, ErrKeyProof) {
		t.Fatalf("a small-order ID's forged proof: %v, want ErrKeyProof", err)
	}
	refused++
	if srv.link(identity.PeerID(weakID)) != nil {
		t.Fatal("the small-order ID linked")
	}

	// A proof made on one connection, replayed on another.
	first := proofConn(t, sa, k)
	proof, err := appendKeyProof(nil, k, first.ConnectionState())
	if err != nil {
		t.Fatal(err)
	}
	check("replayed", helloAnswer(t, proofConn(t, sa, k), proof), k)
	if err := helloAnswer(t, first, proof); err != nil {
		t.Fatalf("the proof on its own connection: %v", err)
	}
	waitUntil(t, func() bool { return srv.link(k.ID()) != nil })
}

// TestKeyProofToken: under ALPNKeyProof the relay token follows the proof
// in HELLO and is checked for the proved key: a node's own token links
// it; a token issued to another key, after a good proof, is refused
// (ErrBadToken) and links nothing.
func TestKeyProofToken(t *testing.T) {
	secret := []byte("key proof token secret")
	srv, sa, _ := dataServerConfig(t, ServerConfig{Secrets: [][]byte{secret}}, nil)
	k, other := genKey(t), genKey(t)
	exp := time.Now().Add(time.Hour)
	hello := func(tok string) error {
		tc := proofConn(t, sa, k)
		body, err := appendKeyProof(nil, k, tc.ConnectionState())
		if err != nil {
			t.Fatal(err)
		}
		return helloAnswer(t, tc, append(body, tok...))
	}
	if err := hello(NewToken(secret, other.ID(), exp)); !errors.Is(err, ErrBadToken) {
		t.Fatalf("another key's token: %v, want ErrBadToken", err)
	}
	if srv.link(k.ID()) != nil || srv.link(other.ID()) != nil {
		t.Fatal("linked with another key's token")
	}
	if err := hello(""); !errors.Is(err, ErrBadToken) {
		t.Fatalf("no token: %v, want ErrBadToken", err)
	}
	if err := hello(NewToken(secret, k.ID(), exp)); err != nil {
		t.Fatalf("its own token: %v", err)
	}
	waitUntil(t, func() bool { return srv.link(k.ID()) != nil })
}
