// Package fleet is the Redis registry of a fleet of rendezvous servers
// (docs/architecture.md, "Fleet"): registrations (peer ID → home server,
// with a TTL its home server refreshes), introductions handed between
// servers over sharded pub/sub, and the list of live servers. It works on
// a standalone Redis (≥ 7) and on a Redis Cluster: every key carries a
// hash tag, so each operation touches one slot.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/rendezvous"
)

// Config configures a Registry. Every zero value is usable.
type Config struct {
	// Logger receives the registry's logs. Nil: discard.
	Logger *slog.Logger
	// TTL is how long a registration and a server's heartbeat live in
	// Redis unless refreshed; the server refreshes both every TTL/3. A
	// restarted (empty) Redis is repopulated within TTL/3. Zero: 15s.
	TTL time.Duration
	// OpTimeout bounds each Redis operation (and connecting to Redis),
	// so a dial fails quickly when Redis is unreachable. Zero: 500ms.
	OpTimeout time.Duration
	// MaxInflight bounds the introductions this server has handed to
	// others and waits on at once; more fail with rendezvous.ErrBusy.
	// Zero: 4096.
	MaxInflight int
	// MaxQueued bounds the registrations and unregistrations waiting to
	// be written to Redis; beyond it they are dropped (and the next
	// refresh writes the registrations). Zero: 65536.
	MaxQueued int
	// ConnectStrings are the server's connect strings, published with its
	// heartbeat so that the fleet's servers can be listed (Servers); see
	// also Advertise. Nil: none.
	ConnectStrings []string
}

func (c Config) withDefaults() Config {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.TTL <= 0 {
		c.TTL = 15 * time.Second
	}
	if c.OpTimeout <= 0 {
		c.OpTimeout = 500 * time.Millisecond
	}
	if c.MaxInflight <= 0 {
		c.MaxInflight = 4096
	}
	if c.MaxQueued <= 0 {
		c.MaxQueued = 65536
	}
	return c
}

// ErrBadURL: a registry URL is malformed.
var ErrBadURL = errors.New("fleet: malformed registry URL")

// Keys (docs/architecture.md, "Fleet"). The {…} is the hash tag.
const serversKey = "{reach}:servers"

func peerKey(p identity.PeerID) string { return "reach:peer:{" + p.String() + "}" }
func serverKey(inst string) string     { return "reach:server:{" + inst + "}" }
func channel(inst string) string       { return "reach:srv:{" + inst + "}" }

// refreshScript refreshes a registration unless another server has taken
// it since (a peer that moved keeps its new home). Scripts run with EVAL,
// not EVALSHA: a pipeline cannot fall back on NOSCRIPT, and a restarted
// Redis has forgotten every script.
const refreshScript = `local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then return redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
return 0`

// unregisterScript deletes a registration only if it still names this server.
const unregisterScript = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`

// Registry is a rendezvous.Registry on Redis. Make it with New; a server
// runs it (rendezvous.ServerConfig.Registry). Close it after the server.
type Registry struct {
	c   redis.UniversalClient
	cfg Config
	log *slog.Logger

	queue chan op

	mu       sync.Mutex
	self     string // set by Run
	connect  []string
	done     chan struct{}
	nextReq  uint64
	inflight map[uint64]chan rendezvous.FleetResult

	nOps, nErrors, nDropped, nPublished atomic.Uint64
	lat                                 [nKinds]latency
	healthy                             atomic.Bool
}

type op struct {
	peer identity.PeerID
	del  bool
}

// New connects to the Redis that url names: redis://HOST:PORT[/DB] or
// rediss://… (TLS), or a comma-separated list of HOST:PORT seeds of a
// Redis Cluster. It does not wait for Redis to be reachable.
func New(url string, cfg Config) (*Registry, error) {
	cfg = cfg.withDefaults()
	c, err := newClient(url, cfg.OpTimeout)
	if err != nil {
		return nil, err
	}
	return NewWithClient(c, cfg), nil
}

func newClient(url string, timeout time.Duration) (redis.UniversalClient, error) {
	url = strings.TrimSpace(url)
	if url == "" {
		return nil, fmt.Errorf("%w: empty", ErrBadURL)
	}
	if strings.HasPrefix(url, "redis://") || strings.HasPrefix(url, "rediss://") {
		o, err := redis.ParseURL(url)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadURL, err)
		}
		o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.PoolTimeout = timeout, timeout, timeout, timeout
		o.MaxRetries = -1   // fail fast: the caller decides
		o.DialerRetries = 1 // idem (go-redis probes a dead Redis every second)
		o.DisableIdentity = true
		return redis.NewClient(o), nil
	}
	var seeds []string
	for _, s := range strings.Split(url, ",") {
		s = strings.TrimSpace(s)
		if s == "" || strings.Contains(s, "://") || !strings.Contains(s, ":") {
			return nil, fmt.Errorf("%w: %q: want redis://HOST:PORT[/DB], rediss://… or HOST:PORT,HOST:PORT,… (Cluster)", ErrBadURL, url)
		}
		seeds = append(seeds, s)
	}
	return redis.NewClusterClient(&redis.ClusterOptions{
		Addrs:       seeds,
		DialTimeout: timeout, ReadTimeout: timeout, WriteTimeout: timeout, PoolTimeout: timeout,
		MaxRetries:      -1,
		DialerRetries:   1,
		DisableIdentity: true,
	}), nil
}

// NewWithClient makes a Registry on a go-redis client the caller made
// (its timeouts should be short: see Config.OpTimeout).
func NewWithClient(c redis.UniversalClient, cfg Config) *Registry {
	cfg = cfg.withDefaults()
	return &Registry{
		c:        c,
		cfg:      cfg,
		log:      cfg.Logger,
		queue:    make(chan op, cfg.MaxQueued),
		inflight: make(map[uint64]chan rendezvous.FleetResult),
		connect:  slices.Clone(cfg.ConnectStrings),
	}
}

// Advertise sets the connect strings published with the server's
// heartbeat (from the next refresh on): a server knows them only once it
// listens.
func (r *Registry) Advertise(connect []string) {
	r.mu.Lock()
	r.connect = slices.Clone(connect)
	r.mu.Unlock()
}

// SetRedisLogger sends go-redis's own log lines (failed dials, which repeat
// while Redis is down) to l at debug level, instead of the standard
// logger. It is process-wide.
func SetRedisLogger(l *slog.Logger) { redis.SetLogger(redisLogger{l}) }

type redisLogger struct{ l *slog.Logger }

func (rl redisLogger) Printf(ctx context.Context, format string, v ...any) {
	rl.l.DebugContext(ctx, fmt.Sprintf(format, v...))
}

// Close closes the connections to Redis.
func (r *Registry) Close() error { return r.c.Close() }

var _ rendezvous.Registry = (*Registry)(nil)
