package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/rendezvous"
)

// message is what servers publish on each other's channels.
type message struct {
	Type   string                  `json:"t"` // "intro" or "answer"
	ID     uint64                  `json:"id"`
	From   string                  `json:"from,omitempty"` // the sender's instance (intro)
	Intro  *rendezvous.FleetIntro  `json:"intro,omitempty"`
	Result *rendezvous.FleetResult `json:"result,omitempty"`
}

// maxMessage bounds a message read from a channel (an offer is a few KB).
const maxMessage = 64 << 10

// batch is the most registrations written in one pipeline.
const batch = 512

// Run implements rendezvous.Registry.
func (r *Registry) Run(ctx context.Context, self string, h rendezvous.FleetHandler) error {
	r.mu.Lock()
	if r.self != "" {
		r.mu.Unlock()
		return errors.New("fleet: Run called twice")
	}
	r.self = self
	r.done = make(chan struct{})
	r.mu.Unlock()
	r.healthy.Store(true)

	var wg sync.WaitGroup // the writer and the replies
	defer wg.Wait()
	defer func() {
		r.mu.Lock()
		close(r.done)
		r.mu.Unlock()
	}()

	ps := r.c.SSubscribe(ctx, channel(self))
	defer ps.Close()
	msgs := ps.Channel(redis.WithChannelHealthCheckInterval(time.Second), redis.WithChannelSize(1024))

	wg.Go(func() { r.writeLoop(ctx) })
	r.log.Info("fleet registry running", "instance", self, "ttl", r.cfg.TTL)
	tick := time.NewTicker(r.cfg.TTL / 3)
	defer tick.Stop()
	r.refresh(ctx, h)
	for {
		select {
		case <-ctx.Done():
			r.leave()
			return nil
		case <-tick.C:
			r.refresh(ctx, h)
		case m, ok := <-msgs:
			if !ok {
				return nil
			}
			r.handle(ctx, &wg, h, m.Payload)
		}
	}
}

// handle serves one message from this server's channel.
func (r *Registry) handle(ctx context.Context, wg *sync.WaitGroup, h rendezvous.FleetHandler, payload string) {
	if len(payload) > maxMessage {
		r.log.Warn("fleet message too large, dropped", "len", len(payload))
		return
	}
	var m message
	if err := json.Unmarshal([]byte(payload), &m); err != nil {
		r.log.Warn("malformed fleet message, dropped", "err", err)
		return
	}
	switch {
	case m.Type == "intro" && m.Intro != nil && m.From != "":
		from, id := m.From, m.ID
		var once sync.Once
		h.Introduce(*m.Intro, func(res rendezvous.FleetResult) {
			once.Do(func() {
				r.mu.Lock()
				defer r.mu.Unlock()
				if closedChan(r.done) {
					return // Run is over: the asking server times out
				}
				wg.Go(func() { r.reply(ctx, from, id, res) })
			})
		})
	case m.Type == "answer" && m.Result != nil:
		r.mu.Lock()
		ch := r.inflight[m.ID]
		delete(r.inflight, m.ID)
		r.mu.Unlock()
		if ch != nil {
			ch <- *m.Result // buffered: one answer per request
		}
	default:
		r.log.Warn("unexpected fleet message, dropped", "type", m.Type)
	}
}

// reply publishes an introduction's result to the server that asked.
func (r *Registry) reply(ctx context.Context, to string, id uint64, res rendezvous.FleetResult) {
	b, err := json.Marshal(message{Type: "answer", ID: id, Result: &res})
	if err != nil {
		return
	}
	octx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.OpTimeout)
	defer cancel()
	if _, err := r.do(octx, kindPublish, func(ctx context.Context) (int64, error) {
		return r.c.SPublish(ctx, channel(to), b).Result()
	}); err != nil {
		r.log.Debug("fleet answer not delivered", "to", to, "err", err)
	}
}

// do runs one Redis operation of kind, counting it, its latency and its
// error.
func (r *Registry) do(ctx context.Context, kind opKind, f func(context.Context) (int64, error)) (int64, error) {
	var n int64
	err := r.timed(kind, func() (err error) { n, err = f(ctx); return err })
	r.nOps.Add(1)
	r.noteErr(err)
	return n, err
}

// noteErr counts a Redis error (redis.Nil is none) and logs changes of health.
func (r *Registry) noteErr(err error) {
	if err != nil && !errors.Is(err, redis.Nil) {
		r.nErrors.Add(1)
		if r.healthy.Swap(false) {
			r.log.Warn("fleet registry: Redis unavailable; serving local peers only", "err", err)
		}
		return
	}
	if !r.healthy.Swap(true) {
		r.log.Info("fleet registry: Redis available again")
	}
}

// refresh rewrites the heartbeat and every local registration.
func (r *Registry) refresh(ctx context.Context, h rendezvous.FleetHandler) {
	ttl := r.cfg.TTL
	r.mu.Lock()
	info, _ := json.Marshal(ServerInfo{Instance: r.self, ConnectStrings: r.connect})
	r.mu.Unlock()
	octx, cancel := context.WithTimeout(ctx, r.cfg.OpTimeout)
	err := r.timed(kindRefresh, func() error {
		_, err := r.c.Pipelined(octx, func(p redis.Pipeliner) error {
			p.Set(octx, serverKey(r.self), info, ttl)
			now := time.Now()
			p.ZAdd(octx, serversKey, redis.Z{Score: float64(now.Add(ttl).UnixMilli()), Member: r.self})
			p.ZRemRangeByScore(octx, serversKey, "-inf", strconv.FormatInt(now.UnixMilli(), 10))
			return nil
		})
		return err
	})
	cancel()
	r.nOps.Add(3)
	r.noteErr(err)
	if err != nil {
		return // Redis is down: the next tick tries again
	}
	peers := h.LocalPeers()
	secs := strconv.Itoa(int(ttl.Seconds() + 0.5))
	for len(peers) > 0 && ctx.Err() == nil {
		n := min(len(peers), batch)
		octx, cancel := context.WithTimeout(ctx, r.cfg.OpTimeout)
		err := r.timed(kindRefresh, func() error {
			_, err := r.c.Pipelined(octx, func(p redis.Pipeliner) error {
				for _, id := range peers[:n] {
					p.Eval(octx, refreshScript, []string{peerKey(id)}, r.self, secs)
				}
				return nil
			})
			return err
		})
		cancel()
		r.nOps.Add(uint64(n))
		r.noteErr(err)
		if err != nil {
			return
		}
		peers = peers[n:]
	}
}

// leave removes this server from the list of live servers (best effort).
func (r *Registry) leave() {
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.OpTimeout)
	defer cancel()
	r.c.ZRem(ctx, serversKey, r.self)
	r.c.Del(ctx, serverKey(r.self))
}

// writeLoop writes queued registrations and unregistrations in pipelines.
func (r *Registry) writeLoop(ctx context.Context) {
	ops := make([]op, 0, batch)
	for {
		ops = ops[:0]
		select {
		case <-ctx.Done():
			return
		case o := <-r.queue:
			ops = append(ops, o)
		}
	more:
		for len(ops) < batch {
			select {
			case o := <-r.queue:
				ops = append(ops, o)
			default:
				break more
			}
		}
		octx, cancel := context.WithTimeout(ctx, r.cfg.OpTimeout)
		err := r.timed(kindWrite, func() error {
			_, err := r.c.Pipelined(octx, func(p redis.Pipeliner) error {
				for _, o := range ops {
					if o.del {
						p.Eval(octx, unregisterScript, []string{peerKey(o.peer)}, r.self)
					} else {
						p.Set(octx, peerKey(o.peer), r.self, r.cfg.TTL)
					}
				}
				return nil
			})
			return err
		})
		cancel()
		r.nOps.Add(uint64(len(ops)))
		r.noteErr(err)
	}
}

func (r *Registry) enqueue(o op) {
	select {
	case r.queue <- o:
	default:
		r.nDropped.Add(1)
	}
}

// Register implements rendezvous.Registry.
func (r *Registry) Register(peer identity.PeerID) { r.enqueue(op{peer: peer}) }

// Unregister implements rendezvous.Registry.
func (r *Registry) Unregister(peer identity.PeerID) { r.enqueue(op{peer: peer, del: true}) }

// Lookup implements rendezvous.Registry.
func (r *Registry) Lookup(ctx context.Context, peer identity.PeerID) (string, error) {
	var home string
	_, err := r.do(ctx, kindLookup, func(ctx context.Context) (int64, error) {
		var err error
		home, err = r.c.Get(ctx, peerKey(peer)).Result()
		return 0, err
	})
	switch {
	case errors.Is(err, redis.Nil):
		return "", rendezvous.ErrUnknownPeer
	case err != nil:
		return "", fmt.Errorf("%w: %v", rendezvous.ErrRegistryUnavailable, err)
	}
	return home, nil
}

// Introduce implements rendezvous.Registry.
func (r *Registry) Introduce(ctx context.Context, home string, in rendezvous.FleetIntro) (rendezvous.FleetResult, error) {
	var none rendezvous.FleetResult
	r.mu.Lock()
	if r.done == nil || closedChan(r.done) {
		r.mu.Unlock()
		return none, fmt.Errorf("%w: not running", rendezvous.ErrRegistryUnavailable)
	}
	if len(r.inflight) >= r.cfg.MaxInflight {
		r.mu.Unlock()
		return none, rendezvous.ErrBusy
	}
	r.nextReq++
	id, self, done := r.nextReq, r.self, r.done
	ch := make(chan rendezvous.FleetResult, 1)
	r.inflight[id] = ch
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.inflight, id)
		r.mu.Unlock()
	}()
	b, err := json.Marshal(message{Type: "intro", ID: id, From: self, Intro: &in})
	if err != nil {
		return none, err
	}
	octx, cancel := context.WithTimeout(ctx, r.cfg.OpTimeout)
	n, err := r.do(octx, kindPublish, func(ctx context.Context) (int64, error) {
		return r.c.SPublish(ctx, channel(home), b).Result()
	})
	cancel()
	if err != nil {
		return none, fmt.Errorf("%w: %v", rendezvous.ErrRegistryUnavailable, err)
	}
	r.nPublished.Add(1)
	if n == 0 {
		return none, rendezvous.ErrPeerOffline // its server is gone
	}
	select {
	case res := <-ch:
		return res, nil
	case <-ctx.Done():
		return none, rendezvous.ErrTimeout
	case <-done:
		return none, fmt.Errorf("%w: closed", rendezvous.ErrRegistryUnavailable)
	}
}

func closedChan(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// ServerInfo is one live server of the fleet.
type ServerInfo struct {
	Instance       string   `json:"instance"`
	ConnectStrings []string `json:"connect,omitempty"`
}

// Servers lists the live servers of the fleet (those whose heartbeat has
// not expired).
func (r *Registry) Servers(ctx context.Context) ([]ServerInfo, error) {
	now := strconv.FormatInt(time.Now().UnixMilli(), 10)
	var ids []string
	err := r.timed(kindServers, func() (err error) {
		ids, err = r.c.ZRangeByScore(ctx, serversKey, &redis.ZRangeBy{Min: now, Max: "+inf"}).Result()
		return err
	})
	r.nOps.Add(1 + uint64(len(ids)))
	r.noteErr(err)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", rendezvous.ErrRegistryUnavailable, err)
	}
	out := make([]ServerInfo, 0, len(ids))
	for _, id := range ids {
		si := ServerInfo{Instance: id}
		if v, err := r.c.Get(ctx, serverKey(id)).Result(); err == nil {
			json.Unmarshal([]byte(v), &si)
		}
		out = append(out, si)
	}
	return out, nil
}

// LiveServers implements rendezvous.ServerLister: the connect strings of
// the live servers other than this one (Run's self), each server's in
// the order it advertised them.
func (r *Registry) LiveServers(ctx context.Context) ([]string, error) {
	all, err := r.Servers(ctx)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	self := r.self
	r.mu.Unlock()
	// In a steady order (Servers' follows the heartbeats), so the list
	// changes only when the fleet does.
	slices.SortFunc(all, func(a, b ServerInfo) int { return strings.Compare(a.Instance, b.Instance) })
	var out []string
	for _, si := range all {
		if si.Instance != self {
			out = append(out, si.ConnectStrings...)
		}
	}
	return out, nil
}

// Stats are a registry's counters.
type Stats struct {
	Ops       uint64 // Redis commands sent (each of a pipeline counts one)
	Errors    uint64 // operations that failed
	Dropped   uint64 // registrations not queued: the queue was full
	Published uint64 // introductions handed to another server
	Inflight  int    // introductions waiting for their answer now
	Healthy   bool   // the last operation succeeded
	// Latency are the timed operations' latencies, by operation (OpLookup,
	// OpPublish, OpWrite, OpRefresh, OpServers): a pipeline is timed as
	// one operation.
	Latency map[string]Histogram
}

// Stats returns a snapshot of the registry's counters.
func (r *Registry) Stats() Stats {
	r.mu.Lock()
	n := len(r.inflight)
	r.mu.Unlock()
	st := Stats{Ops: r.nOps.Load(), Errors: r.nErrors.Load(), Dropped: r.nDropped.Load(),
		Published: r.nPublished.Load(), Inflight: n, Healthy: r.healthy.Load()}
	st.Latency = make(map[string]Histogram, nKinds)
	for k := range nKinds {
		st.Latency[opNames[k]] = r.lat[k].snapshot()
	}
	return st
}
