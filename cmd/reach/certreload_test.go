package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/reachp2p/reach/rendezvous"
)

// writeCert writes a self-signed certificate for CN name and its key as
// PEM files, each through a temporary file and a rename (as certbot and
// cert-manager replace them), with modification time mod.
func writeCert(t *testing.T, certFile, keyFile, name string, mod time.Time) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		path string
		pem  *pem.Block
	}{{keyFile, &pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}}, {certFile, &pem.Block{Type: "CERTIFICATE", Bytes: der}}} {
		tmp := f.path + ".new"
		if err := os.WriteFile(tmp, pem.EncodeToMemory(f.pem), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(tmp, mod, mod); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, f.path); err != nil {
			t.Fatal(err)
		}
	}
}

// servedName is the CN of the certificate a TLS client that offers no
// reach ALPN (a browser, a WebSocket client) gets at addr.
func servedName(t *testing.T, addr string) string {
	t.Helper()
	d := &net.Dialer{Timeout: 3 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatalf("TLS handshake with %s: %v", addr, err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].Subject.CommonName
}

// waitServed waits up to d for the server to present want.
func waitServed(t *testing.T, addr, want string, d time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		got := servedName(t, addr)
		if got == want || time.Now().After(deadline) {
			return got
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestServerCertificateReload: reach server with --tls-cert/--tls-key
// serves a renewed pair to new handshakes without a restart: when the
// files change (renamed into place, as certbot does), and, for a pair
// swapped in with the old modification times, on SIGHUP. The process and
// its connect string stay the same throughout.
func TestServerCertificateReload(t *testing.T) {
	bin := reachBinary(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	t0 := time.Now().Add(-time.Hour).Truncate(time.Second)
	writeCert(t, certFile, keyFile, "one.example", t0)
	var stderr lockedBuffer
	sa, cmd := runServerEnv(t, bin, []string{"STATE_DIRECTORY=" + t.TempDir()}, &stderr,
		"--listen", "127.0.0.1:0", "--tls-port", "0", "--tls-cert", certFile, "--tls-key", keyFile)
	addr := net.JoinHostPort(sa.Host, strconv.Itoa(int(sa.Port)))
	pid := cmd.Process.Pid
	if got := servedName(t, addr); got != "one.example" {
		t.Fatalf("first certificate: CN %q", got)
	}

	// Renewed: new files, new modification times.
	writeCert(t, certFile, keyFile, "two.example", t0.Add(time.Minute))
	if got := waitServed(t, addr, "two.example", 3*time.Second); got != "two.example" {
		t.Fatalf("after renewal: CN %q, want two.example\n%s", got, stderr.String())
	}

	// Swapped with the old times: nothing changes until SIGHUP.
	writeCert(t, certFile, keyFile, "three.example", t0.Add(time.Minute))
	time.Sleep(certCheckEvery + 200*time.Millisecond)
	if got := servedName(t, addr); got != "two.example" {
		t.Fatalf("same modification times, no SIGHUP: CN %q, want two.example still", got)
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if got := waitServed(t, addr, "three.example", 3*time.Second); got != "three.example" {
		t.Fatalf("after SIGHUP: CN %q, want three.example\n%s", got, stderr.String())
	}

	// A broken pair (a renewal half written) keeps the one in use.
	if err := os.WriteFile(certFile, []byte("not PEM"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(certFile, t0.Add(2*time.Minute), t0.Add(2*time.Minute))
	time.Sleep(certCheckEvery + 200*time.Millisecond)
	if got := servedName(t, addr); got != "three.example" {
		t.Fatalf("broken renewal: CN %q, want three.example still", got)
	}
	// (The server logs it at the handshake that found the pair broken;
	// its stderr reaches us through a pipe, a moment later.)
	for end := time.Now().Add(3 * time.Second); !strings.Contains(stderr.String(), "TLS certificate not reloaded"); {
		if time.Now().After(end) {
			t.Errorf("no warning for the broken pair within 3 s:\n%s", stderr.String())
			break
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Reach clients still get the pinned key's certificate, and it is
	// the same server.
	rc, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{rendezvous.ALPN}})
	if err != nil {
		t.Fatalf("handshake offering %s: %v", rendezvous.ALPN, err)
	}
	if cn := rc.ConnectionState().PeerCertificates[0].Subject.CommonName; strings.HasSuffix(cn, ".example") {
		t.Errorf("a client offering reach's ALPN got the web certificate %q", cn)
	}
	rc.Close()
	if cmd.Process.Pid != pid || cmd.ProcessState != nil {
		t.Error("the server restarted")
	}
	stopServer(t, cmd)
}

// TestCertReloaderKeepsOldOnMissingFile: a file that vanished (a symlink
// swap in progress) keeps the certificate in use.
func TestCertReloaderKeepsOldOnMissingFile(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeCert(t, certFile, keyFile, "one.example", time.Now().Add(-time.Hour))
	r, err := newCertReloader(certFile, keyFile, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(keyFile)
	if r.Reload() {
		t.Error("Reload with the key missing reported a new pair")
	}
	c, err := r.GetCertificate(nil)
	if err != nil || c == nil || c.Leaf == nil || c.Leaf.Subject.CommonName != "one.example" {
		t.Errorf("GetCertificate = %v, %v; want one.example", c, err)
	}
	if _, err := newCertReloader(certFile, keyFile, testLogger(t)); err == nil {
		t.Error("newCertReloader with the key missing: no error")
	}
}
