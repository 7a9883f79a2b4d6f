package natlab

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// SquidPort is the proxy port on the router's LAN address.
const SquidPort = 3128

// Squid is a squid HTTP proxy on a router's LAN address: the only way
// out of a ProxyOnly network. It allows, from the LAN only, HTTP CONNECT
// to port 443 and plain HTTP requests to port 80; it caches nothing and
// needs no DNS (clients use numeric addresses).
type Squid struct {
	r    *Router
	dir  string
	d    *daemon
	user string // "" without proxy authentication
}

// StartSquid starts squid in the router's namespace, in the foreground
// (squid -N), with its configuration, pid file and logs in a temporary
// directory. It returns once the proxy port accepts connections. The lab
// stops it on Close. Squid's own connections leave from the router's WAN
// address, so it works on any router; it is meant for ProxyOnly ones.
func (r *Router) StartSquid(ctx context.Context) (*Squid, error) {
	return r.startSquid(ctx, "", "")
}

// StartSquidAuth is StartSquid with proxy authentication: every request
// must carry Basic credentials for user and password
// (Proxy-Authorization), checked by squid's basic_ncsa_auth helper
// against an htpasswd file (APR1-MD5, made with openssl) in squid's
// temporary directory. Without them, or with wrong ones, squid answers
// 407 and logs TCP_DENIED/407.
func (r *Router) StartSquidAuth(ctx context.Context, user, password string) (*Squid, error) {
	if user == "" || strings.ContainsAny(user, ":\n") {
		return nil, fmt.Errorf("natlab: squid: bad proxy user %q", user)
	}
	return r.startSquid(ctx, user, password)
}

// SquidAuthHelper is Debian's basic_ncsa_auth, squid's htpasswd checker.
const SquidAuthHelper = "/usr/lib/squid/basic_ncsa_auth"

func (r *Router) startSquid(ctx context.Context, proxyUser, password string) (*Squid, error) {
	bin, err := exec.LookPath("squid")
	if err != nil {
		if _, err := os.Stat("/usr/sbin/squid"); err != nil {
			return nil, fmt.Errorf("%w: squid (apt-get install squid)", ErrMissingTool)
		}
		bin = "/usr/sbin/squid"
	}
	dir, err := os.MkdirTemp("", "natlab-squid-"+r.name+"-")
	if err != nil {
		return nil, err
	}
	r.lab.onStop(func() { os.RemoveAll(dir) })
	s := &Squid{r: r, dir: dir, user: proxyUser}
	// Run as root squid switches to its effective user (Debian: proxy),
	// which must be able to write the logs.
	if u, err := user.Lookup("proxy"); err == nil {
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, err
		}
	}
	if proxyUser != "" {
		if _, err := os.Stat(SquidAuthHelper); err != nil {
			return nil, fmt.Errorf("%w: %s (apt-get install squid)", ErrMissingTool, SquidAuthHelper)
		}
		cmd := exec.CommandContext(ctx, "openssl", "passwd", "-apr1", "-stdin")
		cmd.Stdin = strings.NewReader(password + "\n")
		hash, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("natlab: squid: hashing the proxy password (openssl passwd): %w", err)
		}
		line := proxyUser + ":" + strings.TrimSpace(string(hash)) + "\n"
		if err := os.WriteFile(s.passwdFile(), []byte(line), 0o644); err != nil {
			return nil, err
		}
	}
	conf := filepath.Join(dir, "squid.conf")
	if err := os.WriteFile(conf, []byte(s.config()), 0o644); err != nil {
		return nil, err
	}
	s.d = &daemon{name: "squid", host: &r.Host}
	if err := s.d.start(bin, "-N", "-d", "1", "-f", conf); err != nil {
		return nil, err
	}
	addr := s.Addr()
	err = s.d.waitFor(ctx, 30*time.Second, func() bool {
		c, err := r.DialTCP(addr, 200*time.Millisecond)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Squid) config() string {
	r := s.r
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	line("http_port %s", s.Addr())
	line("visible_hostname natlab-%s", r.name)
	line("pid_filename %s", filepath.Join(s.dir, "squid.pid"))
	line("cache_log %s", filepath.Join(s.dir, "cache.log"))
	line("access_log stdio:%s", filepath.Join(s.dir, "access.log"))
	line("coredump_dir %s", s.dir)
	line("netdb_filename none")
	line("logfile_rotate 0")
	line("pinger_enable off")
	line("cache deny all")
	line("cache_mem 8 MB")
	line("shutdown_lifetime 0 seconds")
	line("dns_nameservers 127.0.0.1") // never used: numeric addresses only
	line("forwarded_for delete")
	line("via off")
	line("acl lan src %s", r.cfg.LAN)
	line("acl tls_port port 443")
	line("acl http_port port 80")
	line("acl CONNECT method CONNECT")
	if s.user != "" {
		line("auth_param basic program %s %s", SquidAuthHelper, s.passwdFile())
		line("auth_param basic realm natlab")
		line("auth_param basic children 2")
		line("acl authed proxy_auth REQUIRED")
	}
	line("http_access deny CONNECT !tls_port")
	line("http_access deny !CONNECT !http_port")
	if s.user != "" {
		line("http_access deny !lan")
		line("http_access deny !authed") // 407: proxy_auth is the line's last ACL
	}
	line("http_access allow lan")
	line("http_access deny all")
	return b.String()
}

// passwdFile is the htpasswd file of StartSquidAuth.
func (s *Squid) passwdFile() string { return filepath.Join(s.dir, "passwd") }

// Addr is the proxy's address: the router's LAN address, port 3128.
func (s *Squid) Addr() netip.AddrPort { return netip.AddrPortFrom(s.r.LANAddr(), SquidPort) }

// URL is the proxy's URL, for http.Transport.Proxy and the like.
func (s *Squid) URL() string { return "http://" + s.Addr().String() }

// Log returns squid's output so far (its cache.log level 1 messages).
func (s *Squid) Log() string { return s.d.out.String() }

// AccessLog returns squid's access log: one line per request, with the
// verdict (e.g. TCP_TUNNEL/200, TCP_DENIED/403).
func (s *Squid) AccessLog() string {
	b, err := os.ReadFile(filepath.Join(s.dir, "access.log"))
	if err != nil {
		return fmt.Sprintf("access log: %v", err)
	}
	return string(b)
}

// Running reports whether squid has not exited.
func (s *Squid) Running() bool { return s.d.running() }

// Stop stops squid (the lab does it on Close anyway).
func (s *Squid) Stop() { s.d.stop() }
