package identity

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestPeerIDRoundTrip(t *testing.T) {
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	s := k.ID().String()
	if len(s) != IDLen {
		t.Fatalf("len %d", len(s))
	}
	got, err := ParsePeerID(" " + strings.ToUpper(s) + "\n")
	if err != nil || got != k.ID() {
		t.Fatalf("parse: %v %v", got, err)
	}
}

func TestPeerIDTypos(t *testing.T) {
	k, _ := GenerateKey()
	s := k.ID().String()
	cases := map[string]string{
		"short":    s[:IDLen-1],
		"long":     s + "a",
		"alphabet": s[:5] + "1" + s[6:],
		"empty":    "",
	}
	// every single-character substitution must be caught by the checksum
	for i := 0; i < IDLen; i++ {
		c := byte('a')
		if s[i] == 'a' {
			c = 'b'
		}
		cases["sub"+string(rune('0'+i%10))+s[i:i+1]] = s[:i] + string(c) + s[i+1:]
	}
	for name, in := range cases {
		if _, err := ParsePeerID(in); !errors.Is(err, ErrBadPeerID) {
			t.Errorf("%s: %q parsed, err=%v", name, in, err)
		}
	}
}

func TestKeyFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "sub", "key")
	k, created, err := LoadOrCreateKey(p)
	if err != nil || !created {
		t.Fatal(err, created)
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %o", st.Mode().Perm())
	}
	k2, created, err := LoadOrCreateKey(p)
	if err != nil || created || k2.ID() != k.ID() {
		t.Fatal("reload", err, created)
	}
	os.Chmod(p, 0o644)
	if _, err := LoadKey(p); !errors.Is(err, ErrKeyPermissions) {
		t.Fatalf("world-readable key: %v", err)
	}
	os.Chmod(p, 0o600)
	os.WriteFile(p, []byte("garbage"), 0o600)
	if _, err := LoadKey(p); !errors.Is(err, ErrBadKeyFile) {
		t.Fatalf("garbage: %v", err)
	}
}

func TestTLSPinning(t *testing.T) {
	srvKey, _ := GenerateKey()
	cliKey, _ := GenerateKey()
	other, _ := GenerateKey()
	scfg, err := ServerTLSConfig(srvKey, "t")
	if err != nil {
		t.Fatal(err)
	}
	run := func(want PeerID) (PeerID, error, *Pin) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		a, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		b, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		ccfg, pin, _ := ClientTLSConfig(cliKey, want, "t")
		done := make(chan PeerID, 1)
		go func() {
			s := tls.Server(b, scfg)
			if s.Handshake() == nil {
				id, _ := PeerIDFromState(s.ConnectionState())
				done <- id
			}
			close(done)
		}()
		c := tls.Client(a, ccfg)
		err = c.Handshake()
		a.Close()
		return <-done, err, pin
	}
	got, err, _ := run(srvKey.ID())
	if err != nil || got != cliKey.ID() {
		t.Fatalf("good handshake: %v, server saw %v", err, got)
	}
	_, err, pin := run(other.ID())
	var wp *WrongPeerError
	if err == nil || !errors.As(pin.Err(), &wp) || !errors.Is(pin.Err(), ErrWrongPeer) || wp.Got != srvKey.ID() {
		t.Fatalf("wrong key accepted: %v / %v", err, pin.Err())
	}
}

// TestLoadOrCreateKeyRace: processes that create the same key file at
// once (commands started together with the default key) all get the same
// key, and the file is 0600.
func TestLoadOrCreateKeyRace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cfg", "reach", "key")
	ids := make(chan PeerID, 16)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			k, _, err := LoadOrCreateKey(path)
			if err != nil {
				t.Error(err)
				return
			}
			ids <- k.ID()
		})
	}
	wg.Wait()
	close(ids)
	first := <-ids
	for id := range ids {
		if id != first {
			t.Fatalf("two keys: %s and %s", first, id)
		}
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v", st.Mode(), err)
	}
	if ents, _ := os.ReadDir(filepath.Dir(path)); len(ents) != 1 {
		t.Errorf("left behind: %v", ents)
	}
}
