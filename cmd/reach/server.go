package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/acme"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/gctarget"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/rendezvous/fleet"
)

const serverHelp = `usage: reach server [--config FILE] [--listen IP or IP:PORT] [--public-addr IP[:PORT]]... [--state DIR] [--tls-port N]
                    [--relay-secret-file FILE]... [--metrics ADDR] [--log-format text|json]
                    [--log-level debug|info|warn|error] [--registry URL] [flags] [-v]
       reach server token --peer ID [--ttl D] [--relay-secret-file FILE]...
       reach server healthcheck [URL]

Runs the public reach server: rendezvous (signalling over QUIC on UDP and
over TLS on TCP), STUN, and the relay, on the same port number for UDP and
TCP (default %d), plus TLS on TCP 443 (--tls-port) when it may bind it:
UDP-blocking firewalls let 443 through. STUN also answers on the next UDP
port (--stun-alt-port), so a client learns with one server whether its
NAT is symmetric. The relay and signalling share
every port (told apart by ALPN). If 443 cannot be bound the server says so
on stderr and clients use the main TCP port. See docs/server.md.

The first line on stdout is exactly

    reach server ready <connect-string>

where the connect string (reach://<server-id>@<host>:<port>) is what peers
need. Its host and port are the first --public-addr; without one, the
host is the --listen IP or, when listening on all interfaces (the
default), the first non-loopback global address of this host (IPv4
preferred), or 127.0.0.1 if there is none. Behind a 1:1 NAT or a load
balancer, name the public address with --public-addr (once per family:
the others are logged as "also advertised", and STUN names each family's
own). Peers may also use a DNS name as the host.

The server keeps its key in DIR/server.key (mode 0600, made on the first
run), so the connect string survives restarts. DIR is --state; without
it, $STATE_DIRECTORY (systemd's StateDirectory=), else /var/lib/reach
when run as root, else the user configuration directory's reach-server
(~/.config/reach-server on Linux). A new DIR means a new connect string.
With relay secrets (--relay-secret-file, $REACH_RELAY_SECRET, or
--relay-secret) the relay requires a token (relay.NewToken) of each peer;
reach server token prints one (reach server token --help).

With --registry, the server joins a fleet of servers sharing one Redis
(redis://HOST:PORT[/DB], rediss://… for TLS, or HOST:PORT,HOST:PORT,… for
a Redis Cluster): a peer registered with any of them can dial a peer
registered with any other. Without it the registry is in memory. See
docs/server.md, "A fleet of servers".

reach server healthcheck asks a server's /healthz (on --metrics): the
Docker image's health check.

Every flag may also come from the environment, REACH_SERVER_ and its name
upper-cased with - as _ (--public-addr: REACH_SERVER_PUBLIC_ADDR; a
repeatable flag's values separated by commas), or from a config file
(--config FILE or $REACH_SERVER_CONFIG): one "name = value" a line, the
flag's name without dashes, # comments, a repeatable flag on several
lines. Flags win over the environment, which wins over the file. An
unknown name in either is an error.

Logs go to stderr, as text (key=value) or JSON (--log-format), at info
and above (--log-level; registrations and relay links are at debug).
SIGINT or SIGTERM shuts it down cleanly; SIGHUP loads --tls-cert and
--tls-key again (they are also reloaded when the files change).

Flags:
`

func runServer(args []string) error {
	if len(args) > 0 {
		switch args[0] {
		case "token":
			return runServerToken(args[1:])
		case "healthcheck":
			return runServerHealth(args[1:])
		}
	}
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	config := fs.String("config", "", "config `FILE`: \"name = value\" lines with the flags' names (default: $REACH_SERVER_CONFIG); flags and the environment win over it")
	listen := fs.String("listen", "", "`IP or IP:PORT` to listen on, UDP and TCP (default: all interfaces, port "+strconv.Itoa(rendezvous.DefaultPort)+")")
	state := fs.String("state", "", "`DIR` that keeps the server key, so the connect string survives restarts (default: $STATE_DIRECTORY, else "+rootStateDir+" as root, else the user config directory's reach-server)")
	verbose := fs.Bool("v", false, "debug logging (--log-level debug)")
	logFormat := fs.String("log-format", "text", "log `FORMAT` on stderr: text (key=value) or json (one object a line)")
	logLevel := fs.String("log-level", "info", "least `LEVEL` logged: debug (every registration and relay link), info, warn or error")
	tlsPort := fs.Uint("tls-port", 443, "extra TCP `PORT` for TLS (signalling and relay), advertised in the connect string; 0: none")
	altSTUN := fs.Int("stun-alt-port", 0, "second UDP `PORT` answering STUN only, so netcheck sees a symmetric NAT with one server (0: the main port + 1; -1: none)")
	tlsCert := fs.String("tls-cert", "", "certificate `FILE` (PEM) for TLS clients that do not speak reach's ALPNs; reach clients always get the self-signed certificate their connect string pins. Loaded again when it or --tls-key changes, and on SIGHUP")
	tlsKey := fs.String("tls-key", "", "private key `FILE` (PEM) of --tls-cert")
	noRelay := fs.Bool("no-relay", false, "run rendezvous and STUN only")
	noGRO := fs.Bool("no-gro", false, "read the UDP socket a datagram at a time instead of asking Linux for UDP GRO (a sender's run of packets in one read; 512 KiB of buffers); for comparisons, or a kernel whose GRO misbehaves")
	var acmeOpts acmeOptions
	acmeOpts.register(fs)
	var public stringList
	fs.Var(&public, "public-addr", "`IP[:PORT]` to advertise in the connect string instead of guessing (behind a 1:1 NAT or a load balancer); repeat for IPv4 and IPv6, the first is in the ready line; no PORT: the bound one")
	var secrets stringList
	fs.Var(&secrets, "relay-secret", "token `SECRET` the relay requires (relay.NewToken); repeat to rotate: tokens made with any are accepted. Visible in the process list: prefer --relay-secret-file or $REACH_RELAY_SECRET")
	var secretFiles stringList
	fs.Var(&secretFiles, "relay-secret-file", "`FILE` of relay secrets, one a line (# comments); repeatable; $REACH_RELAY_SECRET adds its lines too")
	maxClients := fs.Int("relay-max-clients", 0, "peers connected to the relay at once (0: 100000)")
	maxSessions := fs.Int("relay-max-sessions", 0, "relay sessions (ordered peer pairs) at once (0: 10000)")
	peerRate := fs.Int("relay-rate", 0, "bytes per second one peer may send through the relay (0: 64 MiB/s; negative: no limit)")
	totalRate := fs.Int("relay-total-rate", 0, "bytes per second all peers together may send through the relay (0: 256 MiB/s; negative: no limit)")
	linksPerIP := fs.Int("relay-max-links-per-ip", 0, "peers linked at once from one IPv4 address or IPv6 /64 (0: 64; negative: no limit)")
	sessionsPerPeer := fs.Int("relay-max-sessions-per-peer", 0, "relay sessions one peer may send on at once (0: 256; negative: no limit)")
	sessionsPerIP := fs.Int("relay-max-sessions-per-ip", 0, "relay sessions the peers of one IPv4 address or IPv6 /64 may send on at once (0: 1024; negative: no limit)")
	connRate := fs.Float64("relay-conn-rate", 0, "new relay links per second from one IP (0: 10; negative: no limit)")
	maxStreams := fs.Int("relay-max-streams", 0, "relayed streams (sessions between two peers both linked over TLS or WebSocket) open at once; each holds at most 4 MiB here (0: 256; negative: none, such pairs relay QUIC packets)")
	streamsPerIP := fs.Int("relay-max-streams-per-ip", 0, "relayed streams the peers of one IPv4 address or IPv6 /64 may be ends of at once (0: 32; negative: no limit)")
	registryURL := fs.String("registry", "", "Redis `URL` shared by a fleet of servers: redis://HOST:PORT[/DB], rediss://HOST:PORT[/DB] (TLS), or HOST:PORT,HOST:PORT,... (Redis Cluster seeds); empty: in memory, this server's peers only")
	registryTTL := fs.Duration("registry-ttl", 0, "how long a registration lives in the fleet's Redis unless its server refreshes it (every third of it) (0: 15s)")
	parkAfter := fs.Duration("park-after", rendezvous.DefaultParkAfter, "let registrations over QUIC idle this long park: their connection closes and a keepalive datagram every 25 s keeps them; the server wakes the node for an introduction (docs/protocol.md, \"Parked registrations\") (0 or negative: off)")
	gcPercent := fs.Int("gc-percent", 0, "the Go runtime's GOGC for the server: how far its heap grows past what is live, in percent, before a collection; higher: fewer collections of the peers' long-lived state, more memory (0: "+strconv.Itoa(gctarget.DefaultPercent)+"; negative: off, only with --memory-limit). $GOGC, when set, wins")
	memLimit := fs.String("memory-limit", "", "soft memory `SIZE` limit for the Go runtime (e.g. 2GiB, 1500MB): it collects more often as the server nears it, whatever --gc-percent says (0 or empty: none). $GOMEMLIMIT, when set, wins")
	metricsAddr := fs.String("metrics", "", "`ADDR` (host:port) serving Prometheus /metrics and /healthz over HTTP; empty: off")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), serverHelp, rendezvous.DefaultPort)
		fs.PrintDefaults()
	}
	err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("server", "unexpected argument %q", fs.Arg(0))
	}
	cfgPath := *config
	if cfgPath == "" {
		cfgPath = os.Getenv(envName(serverEnvPrefix, "config"))
	}
	var file map[string][]configEntry
	if cfgPath != "" {
		if file, err = readConfigFile(cfgPath); err != nil {
			return err
		}
	}
	fromEnv, fromFile, err := configSources(fs, serverEnvPrefix, os.Environ(), file, "config")
	if err != nil {
		return usagef("server", "%v", err)
	}
	addr, err := parseListen(*listen)
	if err != nil {
		return err
	}
	publicAddrs, err := parsePublicAddrs(public)
	if err != nil {
		return usagef("server", "%v", err)
	}
	logger, err := serverLogger(os.Stderr, *logFormat, *logLevel, *verbose)
	if err != nil {
		return usagef("server", "%v", err)
	}
	stateDir, err := serverStateDir(*state, osStateEnv())
	if err != nil {
		return err
	}
	key, created, err := serverKey(stateDir)
	if err != nil {
		return err
	}
	if len(fromEnv) > 0 || cfgPath != "" {
		logger.Info("configuration", "file", cfgPath, "from_file", fromFile, "from_env", fromEnv)
	}
	logger.Info("state", "dir", stateDir, "new_key", created)
	limit, err := parseSize(*memLimit)
	if err != nil {
		return usagef("server", "--memory-limit: %v", err)
	}
	gc, err := gctarget.Apply(gctarget.Config{Percent: *gcPercent, Limit: limit}, os.Getenv)
	if err != nil {
		return usagef("server", "--gc-percent, --memory-limit: %v", err)
	}
	logger.Info("garbage collection", "gogc", gc.Percent, "gogc_from", gc.PercentFrom, "memory_limit", limitString(gc), "memory_limit_from", gc.LimitFrom)

	if *tlsPort > 65535 {
		return fmt.Errorf("--tls-port %d: not a port", *tlsPort)
	}
	if *altSTUN < -1 || *altSTUN > 65535 {
		return usagef("server", "--stun-alt-port %d: not a port (-1 for none)", *altSTUN)
	}
	scfg := rendezvous.ServerConfig{Key: key, Logger: logger, TLSPort: uint16(*tlsPort),
		AltSTUNPort: uint16(max(*altSTUN, 0)), DisableAltSTUN: *altSTUN < 0, PublicAddrs: publicAddrs,
		Park: parkConfig(*parkAfter), DisableGRO: *noGRO}
	if (*tlsCert == "") != (*tlsKey == "") {
		return errors.New("--tls-cert and --tls-key go together")
	}
	var acmeCerts *acmeCerts
	switch {
	case len(acmeOpts.domains) > 0 && *tlsCert != "":
		return usagef("server", "%v", errACMEWithCert)
	case len(acmeOpts.domains) > 0:
		if acmeCerts, err = newACME(&acmeOpts, stateDir, logger.With("part", "acme")); err != nil {
			return usagef("server", "%v", err)
		}
		scfg.GetCertificate = acmeCerts.GetCertificate
		scfg.CertificateALPNs = []string{acme.ALPNProto}
	case acmeOpts.httpAddr != "":
		return usagef("server", "--acme-http needs --acme-domain")
	}
	var certs *certReloader
	if *tlsCert != "" {
		if certs, err = newCertReloader(*tlsCert, *tlsKey, logger); err != nil {
			return err
		}
		scfg.GetCertificate = certs.GetCertificate
	}
	var rl *relay.Server
	if !*noRelay {
		rcfg := relay.ServerConfig{
			MaxClients: *maxClients, MaxSessions: *maxSessions, PeerRate: *peerRate, ConnRate: *connRate,
			TotalRate: *totalRate, MaxLinksPerIP: *linksPerIP, MaxSessionsPerPeer: *sessionsPerPeer, MaxSessionsPerIP: *sessionsPerIP,
			MaxStreams: *maxStreams, MaxStreamsPerIP: *streamsPerIP,
			Logger: logger.With("part", "relay"),
		}
		if rcfg.Secrets, err = relaySecrets(secrets, secretFiles, os.Getenv); err != nil {
			return err
		}
		if len(rcfg.Secrets) > 0 {
			logger.Info("relay requires tokens", "secrets", len(rcfg.Secrets))
		}
		rl = relay.NewServer(rcfg)
		scfg.Protocols = map[string]rendezvous.Protocol{relay.ALPN: rl}
	}

	var fleetReg *fleet.Registry
	if *registryURL != "" {
		fleet.SetRedisLogger(logger.With("part", "redis"))
		fleetReg, err = fleet.New(*registryURL, fleet.Config{TTL: *registryTTL, Logger: logger.With("part", "fleet")})
		if err != nil {
			return usagef("server", "--registry: %v", err)
		}
		defer fleetReg.Close()
		scfg.Registry = fleetReg
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() { // SIGHUP: load --tls-cert/--tls-key again (systemctl reload)
		for {
			select {
			case <-hup:
				if certs == nil {
					logger.Info("SIGHUP: nothing to reload (no --tls-cert; ACME certificates renew on their own)")
				} else {
					certs.Reload()
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	var metricsLn net.Listener
	if *metricsAddr != "" {
		// Bound before the server starts, so a taken port fails at once;
		// served (and /healthz answers) once the server runs.
		if metricsLn, err = net.Listen("tcp", *metricsAddr); err != nil {
			return fmt.Errorf("--metrics: %w", err)
		}
		defer metricsLn.Close()
	}
	rs, err := rendezvous.StartServer(ctx, scfg, addr)
	if err != nil {
		return err
	}
	if fleetReg != nil {
		fleetReg.Advertise(rs.ConnectStrings())
		logger.Info("fleet: registry shared through Redis", "instance", rs.Instance())
	}
	if acmeCerts != nil {
		stopHTTP, err := acmeCerts.start(acmeOpts.httpAddr)
		if err != nil {
			rs.Close()
			return err
		}
		defer stopHTTP()
	}
	if metricsLn != nil {
		reg, err := serverRegistry(rs.Server, rl, fleetReg)
		if err != nil {
			rs.Close()
			return err
		}
		ms := &http.Server{Handler: metricsHandler(reg), ReadHeaderTimeout: 5 * time.Second}
		go ms.Serve(metricsLn)
		defer ms.Close()
		logger.Info("metrics serving HTTP", "addr", metricsLn.Addr().String())
	}
	if _, err := fmt.Printf("reach server ready %s\n", rs.ConnectString()); err != nil {
		rs.Close()
		return err
	}
	for _, cs := range rs.ConnectStrings()[1:] {
		logger.Info("also advertised", "connect", cs)
	}
	select {
	case <-ctx.Done():
		logger.Info("shutting down")
	case <-rs.Done():
	}
	return rs.Close()
}

// parseListen accepts "", "IP", "IP:PORT", "[IPv6]:PORT" and ":PORT". An
// empty IP means all interfaces (dual stack); a missing port, DefaultPort.
func parseListen(s string) (netip.AddrPort, error) {
	all := netip.IPv6Unspecified()
	if s == "" {
		return netip.AddrPortFrom(all, rendezvous.DefaultPort), nil
	}
	if ip, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil {
		return netip.AddrPortFrom(ip, rendezvous.DefaultPort), nil
	}
	if port, ok := strings.CutPrefix(s, ":"); ok {
		p, err := strconv.ParseUint(port, 10, 16)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("--listen %q: bad port", s)
		}
		return netip.AddrPortFrom(all, uint16(p)), nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("--listen %q: want IP or IP:PORT (IPv6 in brackets with a port)", s)
	}
	return ap, nil
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(s string) error { *l = append(*l, s); return nil }

// serverKey loads dir/server.key, or makes it (and dir, mode 0700) if it
// does not exist; created says which.
func serverKey(dir string) (k *identity.Key, created bool, err error) {
	k, created, err = identity.LoadOrCreateKey(filepath.Join(dir, "server.key"))
	if err != nil {
		return nil, false, fmt.Errorf("state directory: %w", err)
	}
	return k, created, nil
}

// parkConfig is --park-after's ParkConfig: 0 (or negative) turns parking
// off, where ParkConfig's zero value means the default.
func parkConfig(after time.Duration) rendezvous.ParkConfig {
	if after <= 0 {
		return rendezvous.ParkConfig{After: -1}
	}
	return rendezvous.ParkConfig{After: after}
}

// limitString says a memory limit for the log.
func limitString(a gctarget.Applied) string {
	if a.LimitFrom == "none" {
		return "none"
	}
	return humanBytes(a.Limit)
}
