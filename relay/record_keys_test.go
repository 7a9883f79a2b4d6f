package relay

import (
	"bytes"
	"crypto/tls"
	"errors"
	"net"
	"testing"
)

// handshakeStates runs a TLS 1.3 handshake over a pipe and returns both
// ends' connection states.
func handshakeStates(t *testing.T) (client, server tls.ConnectionState) {
	t.Helper()
	cert, err := genKey(t).Certificate()
	if err != nil {
		t.Fatal(err)
	}
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	sc := tls.Server(c2, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{ALPNRecord}})
	done := make(chan error, 1)
	go func() { done <- sc.Handshake() }()
	cc := tls.Client(c1, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{ALPNRecord}})
	if err := cc.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return cc.ConnectionState(), sc.ConnectionState()
}

// TestRecordKeysPerDirection (review of issue 14): each direction has its
// own secret, the one its other end opens with; none is the key proof's
// exporter value; a record reflected back to its sender does not open.
func TestRecordKeysPerDirection(t *testing.T) {
	ccs, scs := handshakeStates(t)
	cin, cout, err := newRecordDirs(ccs, false)
	if err != nil {
		t.Fatal(err)
	}
	sin, sout, err := newRecordDirs(scs, true)
	if err != nil {
		t.Fatal(err)
	}
	if cout.secret != sin.secret || sout.secret != cin.secret {
		t.Fatal("a direction's two ends hold different secrets")
	}
	if cout.secret == cin.secret || cout.iv == cin.iv {
		t.Fatal("both directions have the same secret or IV")
	}
	proof, err := ccs.ExportKeyingMaterial(keyProofLabel, nil, 32)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(proof, cout.secret[:]) || bytes.Equal(proof, cin.secret[:]) {
		t.Fatal("a record secret is the key proof's exporter value")
	}
	rec, err := cout.seal(nil, appendFrame(nil, framePing, []byte("x")))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cin.open(bytes.Clone(rec)); !errors.Is(err, ErrRecord) {
		t.Fatalf("the client's record reflected to it: %v, want ErrRecord", err)
	}
	plain, err := sin.open(rec)
	if err != nil || !bytes.Equal(plain, appendFrame(nil, framePing, []byte("x"))) {
		t.Fatalf("the server opened %q, %v", plain, err)
	}
}
