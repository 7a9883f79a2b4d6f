package natlab

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Coturn's ports.
const (
	CoturnPort    = 3478 // STUN/TURN over UDP and TCP
	CoturnTLSPort = 5349 // TURN over TLS (TCP) and DTLS (UDP)
)

// LabPeerRanges are the address ranges coturn relays to: every address
// the lab hands out (the carrier and home LANs, the internet segment and
// the UPnP routers' WAN range). coturn denies every other peer address,
// so it can never act as an open relay to the real internet.
var LabPeerRanges = []string{
	"10.0.0.0-10.255.255.255",
	"100.64.0.0-100.127.255.255",
	"203.0.113.0-203.0.113.255",
	"5.5.5.0-5.5.5.255", // UPnPWANPrefix
	"2001:db8::-2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
}

// ErrCoturnAuthMix: coturn cannot use long-term accounts and a REST API
// secret at the same time.
var ErrCoturnAuthMix = errors.New("natlab: coturn: Users and Secret cannot be combined")

// CoturnConfig configures a coturn STUN/TURN server.
type CoturnConfig struct {
	// Users are long-term credential accounts (RFC 8489), name to
	// password. Nil: none.
	Users map[string]string
	// Secret enables the TURN REST API: time-limited credentials derived
	// from this shared secret (see TURNRESTCredentials). Empty: off.
	// coturn cannot mix the two schemes (the secret overrides the
	// accounts), so StartCoturn refuses Users and Secret together.
	Secret string
	// Realm is the authentication realm. Empty: "natlab".
	Realm string
	// TLS adds TURN over TLS (TCP 5349) and DTLS (UDP 5349) with a
	// self-signed certificate for the host's address (see Certificate).
	// False: plain UDP and TCP on 3478 only.
	TLS bool
	// MinRelayPort and MaxRelayPort bound the relay ports. Zero: 49152
	// and 49407.
	MinRelayPort, MaxRelayPort uint16
}

// Coturn is a coturn server running on a public host. With neither Users
// nor Secret it is a STUN server only (TURN allocations are refused).
type Coturn struct {
	h    *Host
	cfg  CoturnConfig
	dir  string
	d    *daemon
	cert *x509.Certificate
}

// StartCoturn starts coturn on h: STUN/TURN on UDP and TCP 3478 (and TLS
// on 5349 if asked) on the host's IPv4 and IPv6 addresses, relaying only
// to LabPeerRanges, no CLI, log on stdout captured (see Log). It returns
// once coturn accepts TCP connections. The lab stops it on Close.
func (h *Host) StartCoturn(ctx context.Context, cfg CoturnConfig) (*Coturn, error) {
	if _, err := exec.LookPath("turnserver"); err != nil {
		return nil, fmt.Errorf("%w: turnserver (apt-get install coturn)", ErrMissingTool)
	}
	if len(cfg.Users) > 0 && cfg.Secret != "" {
		return nil, ErrCoturnAuthMix
	}
	if cfg.Realm == "" {
		cfg.Realm = "natlab"
	}
	if cfg.MinRelayPort == 0 {
		cfg.MinRelayPort = 49152
	}
	if cfg.MaxRelayPort == 0 {
		cfg.MaxRelayPort = cfg.MinRelayPort + 255
	}
	if cfg.MaxRelayPort < cfg.MinRelayPort {
		return nil, fmt.Errorf("natlab: coturn relay ports %d-%d: empty range", cfg.MinRelayPort, cfg.MaxRelayPort)
	}
	dir, err := os.MkdirTemp("", "natlab-coturn-"+h.name+"-")
	if err != nil {
		return nil, err
	}
	h.lab.onStop(func() { os.RemoveAll(dir) })
	c := &Coturn{h: h, cfg: cfg, dir: dir}
	if cfg.TLS {
		if err := c.writeCert(); err != nil {
			return nil, err
		}
	}
	conf := filepath.Join(dir, "turnserver.conf")
	if err := os.WriteFile(conf, []byte(c.config()), 0o600); err != nil {
		return nil, err
	}
	c.d = &daemon{name: "coturn", host: h}
	if err := c.d.start("turnserver", "-c", conf); err != nil {
		return nil, err
	}
	addr := c.Addr()
	err = c.d.waitFor(ctx, 15*time.Second, func() bool {
		conn, err := h.DialTCP(addr, 200*time.Millisecond)
		if err != nil {
			return false
		}
		conn.Close()
		return true
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Coturn) config() string {
	h := c.h
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	line("listening-ip=%s", h.addr4)
	line("relay-ip=%s", h.addr4)
	if h.addr6.IsValid() {
		line("listening-ip=%s", h.addr6)
		line("relay-ip=%s", h.addr6)
	}
	line("listening-port=%d", CoturnPort)
	line("min-port=%d", c.cfg.MinRelayPort)
	line("max-port=%d", c.cfg.MaxRelayPort)
	line("realm=%s", c.cfg.Realm)
	line("server-name=natlab-%s", h.name)
	line("fingerprint")
	line("no-cli")
	line("no-rfc5780") // one address only: no NAT behaviour discovery
	line("no-multicast-peers")
	line("no-software-attribute")
	line("no-tlsv1")
	line("no-tlsv1_1")
	if c.cfg.TLS {
		line("tls-listening-port=%d", CoturnTLSPort)
		line("cert=%s", filepath.Join(c.dir, "cert.pem"))
		line("pkey=%s", filepath.Join(c.dir, "key.pem"))
	} else {
		line("no-tls")
		line("no-dtls")
	}
	// Relay only inside the lab: deny everything, allow the lab's ranges
	// (coturn checks the allowed list first). Loopback peers are refused
	// by default.
	line("denied-peer-ip=0.0.0.0-255.255.255.255")
	line("denied-peer-ip=::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
	for _, r := range LabPeerRanges {
		line("allowed-peer-ip=%s", r)
	}
	switch {
	case len(c.cfg.Users) == 0 && c.cfg.Secret == "":
		line("stun-only")
	case c.cfg.Secret != "":
		line("use-auth-secret")
		line("static-auth-secret=%s", c.cfg.Secret)
	default:
		line("lt-cred-mech")
		names := make([]string, 0, len(c.cfg.Users))
		for u := range c.cfg.Users {
			names = append(names, u)
		}
		sort.Strings(names)
		for _, u := range names {
			line("user=%s:%s", u, c.cfg.Users[u])
		}
	}
	line("userdb=%s", filepath.Join(c.dir, "turndb"))
	line("pidfile=%s", filepath.Join(c.dir, "turnserver.pid"))
	line("log-file=stdout")
	line("simple-log")
	line("verbose")
	return b.String()
}

// writeCert makes a self-signed ECDSA certificate for the host's
// addresses, valid for a day.
func (c *Coturn) writeCert() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		return err
	}
	ips := []net.IP{c.h.addr4.AsSlice()}
	if c.h.addr6.IsValid() {
		ips = append(ips, c.h.addr6.AsSlice())
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "natlab-" + c.h.name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           ips,
		DNSNames:              []string{"natlab-" + c.h.name},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	if c.cert, err = x509.ParseCertificate(der); err != nil {
		return err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(c.dir, "cert.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(c.dir, "key.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
}

// Host is the host coturn runs on.
func (c *Coturn) Host() *Host { return c.h }

// Addr is the STUN/TURN address (UDP and TCP): the host's IPv4 address,
// port 3478.
func (c *Coturn) Addr() netip.AddrPort { return netip.AddrPortFrom(c.h.addr4, CoturnPort) }

// Addr6 is the IPv6 STUN/TURN address (invalid if the host has no IPv6).
func (c *Coturn) Addr6() netip.AddrPort {
	if !c.h.addr6.IsValid() {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(c.h.addr6, CoturnPort)
}

// TLSAddr is the TURN-over-TLS address (invalid without CoturnConfig.TLS).
func (c *Coturn) TLSAddr() netip.AddrPort {
	if !c.cfg.TLS {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(c.h.addr4, CoturnTLSPort)
}

// Certificate is the self-signed TLS certificate (nil without TLS); add it
// to a client's RootCAs.
func (c *Coturn) Certificate() *x509.Certificate { return c.cert }

// Realm is the authentication realm.
func (c *Coturn) Realm() string { return c.cfg.Realm }

// RelayPorts is the range relay addresses are allocated from.
func (c *Coturn) RelayPorts() (lo, hi uint16) { return c.cfg.MinRelayPort, c.cfg.MaxRelayPort }

// Log returns coturn's output so far.
func (c *Coturn) Log() string { return c.d.out.String() }

// Running reports whether coturn has not exited.
func (c *Coturn) Running() bool { return c.d.running() }

// Stop stops coturn (the lab does it on Close anyway).
func (c *Coturn) Stop() { c.d.stop() }

// TURNRESTCredentials derives TURN REST API credentials (the scheme of
// coturn's use-auth-secret) for user, valid for ttl: the username is
// "<expiry unix time>:<user>" and the password base64(HMAC-SHA1(secret,
// username)).
func TURNRESTCredentials(secret, user string, ttl time.Duration) (username, password string) {
	username = strconv.FormatInt(time.Now().Add(ttl).Unix(), 10) + ":" + user
	m := hmac.New(sha1.New, []byte(secret))
	m.Write([]byte(username))
	return username, base64.StdEncoding.EncodeToString(m.Sum(nil))
}
