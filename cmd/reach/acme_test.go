package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// pebbleCA is a local ACME CA: Debian's pebble, with
// pebble-challtestsrv as its DNS (every name is 127.0.0.1), started for a
// test and killed when it ends.
type pebbleCA struct {
	directory string         // the ACME directory URL
	apiRoots  string         // PEM file that verifies pebble's own HTTPS
	roots     *x509.CertPool // the roots of the certificates it issues
	httpPort  int            // where it validates HTTP-01
	tlsPort   int            // where it validates TLS-ALPN-01
}

// freeTCPPort returns a TCP port that was free a moment ago.
func freeTCPPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startDaemon runs a test daemon with its output to t.Log, killed when
// the test ends.
func startDaemon(t *testing.T, env []string, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("%s:\n%s", name, out.String())
		}
	})
}

// waitTCP waits until addr accepts connections.
func waitTCP(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not accept connections: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startPebble starts pebble-challtestsrv and pebble on loopback; issued
// certificates are valid for validity.
func startPebble(t *testing.T, validity time.Duration) *pebbleCA {
	t.Helper()
	for _, bin := range []string{"pebble", "pebble-challtestsrv"} {
		if _, err := exec.LookPath(bin); err != nil {
			if os.Getenv("REACH_LAB_REQUIRED") != "" { // CI (.ci/run installs pebble)
				t.Fatalf("%s not installed: %v", bin, err)
			}
			t.Skipf("%s not installed (Debian: apt-get install pebble): %v", bin, err)
		}
	}
	dir := t.TempDir()
	// pebble's own HTTPS (the ACME API) needs a certificate: one for
	// 127.0.0.1, which the server trusts through $SSL_CERT_FILE.
	certFile, keyFile := filepath.Join(dir, "api.pem"), filepath.Join(dir, "api.key")
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pebble API"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)

	dnsPort := freeUDPPort(t)
	startDaemon(t, nil, "pebble-challtestsrv", "-dns01", "127.0.0.1:"+strconv.Itoa(dnsPort), "-http01", "", "-https01", "",
		"-tlsalpn01", "", "-management", "127.0.0.1:"+strconv.Itoa(freeTCPPort(t)), "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "")

	ca := &pebbleCA{apiRoots: certFile, httpPort: freeTCPPort(t), tlsPort: freeTCPPort(t)}
	api, mgmt := "127.0.0.1:"+strconv.Itoa(freeTCPPort(t)), "127.0.0.1:"+strconv.Itoa(freeTCPPort(t))
	conf, _ := json.Marshal(map[string]any{"pebble": map[string]any{
		"listenAddress": api, "managementListenAddress": mgmt, "certificate": certFile, "privateKey": keyFile,
		"httpPort": ca.httpPort, "tlsPort": ca.tlsPort, "certificateValidityPeriod": int(validity.Seconds()),
	}})
	confFile := filepath.Join(dir, "pebble.json")
	os.WriteFile(confFile, conf, 0o600)
	startDaemon(t, []string{"PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0", "PEBBLE_AUTHZREUSE=0"},
		"pebble", "-config", confFile, "-dnsserver", "127.0.0.1:"+strconv.Itoa(dnsPort))
	waitTCP(t, api)
	waitTCP(t, mgmt)
	ca.directory = "https://" + api + "/dir"

	// The root of what it issues, from its management API.
	pool := x509.NewCertPool()
	apiPool := x509.NewCertPool()
	apiPool.AppendCertsFromPEM(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: apiPool}}}
	resp, err := hc.Get("https://" + mgmt + "/roots/0")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	root, _ := io.ReadAll(resp.Body)
	if !pool.AppendCertsFromPEM(root) {
		t.Fatalf("pebble's root: %s %q", resp.Status, root)
	}
	ca.roots = pool
	return ca
}

// verifiedCert handshakes with addr as a browser would (SNI name, no
// reach ALPN), verifying the chain against roots; it returns the leaf.
func verifiedCert(addr, name string, roots *x509.CertPool) (*x509.Certificate, error) {
	d := &net.Dialer{Timeout: 10 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{ServerName: name, RootCAs: roots, NextProtos: []string{"http/1.1"}})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0], nil
}

// waitCert waits up to d for a verified certificate other than not.
func waitCert(t *testing.T, addr, name string, roots *x509.CertPool, not *x509.Certificate, d time.Duration) *x509.Certificate {
	t.Helper()
	deadline := time.Now().Add(d)
	var last error
	for time.Now().Before(deadline) {
		leaf, err := verifiedCert(addr, name, roots)
		if err == nil && (not == nil || leaf.SerialNumber.Cmp(not.SerialNumber) != 0) {
			return leaf
		}
		if err == nil {
			err = errors.New("still the same certificate")
		}
		last = err
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("no new verified certificate from %s within %v: %v", addr, d, last)
	return nil
}

// TestServerACME: reach server --acme-domain gets a certificate from a
// local ACME CA (pebble) that a client verifies against the CA's root,
// renews it before it expires (pebble issues 40 s certificates here; the
// server renews 35 s before expiry) and serves the renewed one without a
// restart; once over TLS-ALPN-01 on the TLS port, once over HTTP-01
// (--acme-http) with no TLS port for the CA to reach.
func TestServerACME(t *testing.T) {
	if testing.Short() {
		t.Skip("runs pebble and waits for a renewal")
	}
	bin := reachBinary(t)
	ca := startPebble(t, 40*time.Second)
	const name = "reach.test"
	for _, c := range []struct {
		name string
		args []string
	}{
		{"tls-alpn-01", []string{"--tls-port", strconv.Itoa(ca.tlsPort)}},
		{"http-01", []string{"--tls-port", "0", "--acme-http", "127.0.0.1:" + strconv.Itoa(ca.httpPort)}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var stderr lockedBuffer
			args := append([]string{"--listen", "127.0.0.1:0", "--acme-domain", name, "--acme-directory", ca.directory,
				"--acme-renew-before", "35s"}, c.args...)
			sa, cmd := runServerEnv(t, bin, []string{"STATE_DIRECTORY=" + t.TempDir(), "SSL_CERT_FILE=" + ca.apiRoots}, &stderr, args...)
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("server log:\n%s", stderr.String())
				}
			})
			port := sa.TCPPort
			if port == 0 {
				port = sa.Port
			}
			addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port)))
			start := time.Now()
			first := waitCert(t, addr, name, ca.roots, nil, 30*time.Second)
			t.Logf("issued in %v: serial %x, valid %v to %v", time.Since(start).Round(time.Millisecond), first.SerialNumber,
				first.NotBefore.Format(time.TimeOnly), first.NotAfter.Format(time.TimeOnly))
			if !slicesContains(first.DNSNames, name) {
				t.Errorf("certificate for %v, want %s", first.DNSNames, name)
			}
			renewed := waitCert(t, addr, name, ca.roots, first, 30*time.Second)
			t.Logf("renewed %v after issue: serial %x, valid to %v", time.Since(start).Round(time.Millisecond), renewed.SerialNumber,
				renewed.NotAfter.Format(time.TimeOnly))
			if !renewed.NotAfter.After(first.NotAfter) {
				t.Errorf("renewed certificate expires %v, not after the first's %v", renewed.NotAfter, first.NotAfter)
			}
			if !strings.Contains(stderr.String(), "ACME certificate ready") {
				t.Errorf("no \"ACME certificate ready\" in the log:\n%s", stderr.String())
			}
			if cmd.ProcessState != nil {
				t.Error("the server exited")
			}
			stopServer(t, cmd)
		})
	}
}

func slicesContains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// TestACMEFlags: the flag combinations that cannot work are usage errors.
func TestACMEFlags(t *testing.T) {
	bin := reachBinary(t)
	for _, c := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--acme-domain", "a.example", "--tls-cert", "c", "--tls-key", "k"}, errACMEWithCert.Error()},
		{[]string{"--acme-http", ":0"}, "--acme-http needs --acme-domain"},
		{[]string{"--acme-domain", "localhost"}, "not a DNS name with a dot"},
	} {
		cmd := exec.Command(bin, append([]string{"server", "--listen", "127.0.0.1:0", "--state", t.TempDir()}, c.args...)...)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != exitUsage || !strings.Contains(string(out), c.msg) {
			t.Errorf("%v: %v\n%s\nwant exit 2 and %q", c.args, err, out, c.msg)
		}
	}
}
