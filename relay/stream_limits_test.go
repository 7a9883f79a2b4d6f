package relay

import (
	"context"
	"errors"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/reachp2p/reach/identity"
)

// TestStreamTinyDataHeld: a sender of 1-byte DATA frames to a receiver
// that reads nothing cannot make the relay hold more memory for that
// receiver than its documented bound (4 MiB × the per-peer stream limit):
// what a queued DATA frame counts against the bound is what it holds.
func TestStreamTinyDataHeld(t *testing.T) {
	sa, srv := startStreamRelay(t, ServerConfig{MaxStreamsPerPeer: 4, PeerRate: -1, TotalRate: -1})
	hostile := dialRaw(t, sa, true)
	victim := dialRaw(t, sa, true) // takes streams, never reads its link
	waitUntil(t, func() bool { l := srv.link(victim.id); return l != nil && l.streams.Load() })
	hostile.write(t, appendStreamFrame(nil, frameOpen, ref(victim.id, 1), nil))
	waitUntil(t, func() bool { return srv.Streams() == 1 })
	var b []byte
	for range 1000 {
		b = appendStreamFrame(b, frameData, ref(victim.id, 1), []byte{'x'})
	}
	held := func() (n int64) {
		l := srv.link(victim.id)
		l.qmu.Lock()
		defer l.qmu.Unlock()
		for _, q := range l.queue {
			n += int64(cap(q))
		}
		return n
	}
	limit := int64(4 * maxStreamWindow)
	var peak int64
	for i := 0; i < 2000 && srv.Streams() == 1; i++ {
		hostile.write(t, b)
		peak = max(peak, held())
		if peak > limit {
			break
		}
	}
	if peak > limit {
		t.Fatalf("the relay held %d MiB of buffers for one receiver, want at most %d MiB", peak>>20, limit>>20)
	}
}

// TestStreamRateSmallBurst: a peer's stream bytes keep to its PeerRate
// even when PeerBurst is smaller than a DATA frame (an operator's strict
// setting): 2 MiB at 1 MiB/s take about two seconds, not a fraction.
func TestStreamRateSmallBurst(t *testing.T) {
	const rate, size = 1 << 20, 2 << 20
	sa, srv := startStreamRelay(t, ServerConfig{PeerRate: rate, PeerBurst: 1024, TotalRate: -1})
	a := dialRaw(t, sa, true)
	b := dialRaw(t, sa, true)
	waitUntil(t, func() bool { l := srv.link(b.id); return l != nil && l.streams.Load() })
	chunk := make([]byte, streamChunk)
	msg := appendStreamFrame(nil, frameOpen, ref(b.id, 1), nil)
	for range size / streamChunk {
		msg = appendStreamFrame(msg, frameData, ref(b.id, 1), chunk)
	}
	start := time.Now()
	go a.tc.Write(msg)
	b.tc.SetReadDeadline(time.Now().Add(20 * time.Second))
	got := 0
	var buf []byte
	for got < size {
		typ, body, nb, err := readFrame(b.tc, buf)
		buf = nb
		if err != nil {
			t.Fatalf("after %d bytes: %v", got, err)
		}
		if typ == frameData {
			got += len(body) - streamHeader
		}
	}
	if d := time.Since(start); d < time.Duration(float64(size-rate/4)/rate*float64(time.Second)) {
		t.Errorf("%d MiB forwarded in %v at a PeerRate of %d MiB/s", size>>20, d, rate>>20)
	}
}

// TestStreamOverrunPerStream: a sender that ignores its receiver's window
// on its one stream gets it reset once the relay holds the most a
// receiver may grant (maxStreamWindow) for it, not the receiving link's
// whole bound (the per-peer stream limit times that): so the stream
// limits bound the relay's memory (docs/server.md: 4 MiB a stream).
func TestStreamOverrunPerStream(t *testing.T) {
	sa, srv := startStreamRelay(t, ServerConfig{PeerRate: -1, TotalRate: -1})
	hostile := dialRaw(t, sa, true)
	victim := dialRaw(t, sa, true) // takes streams, never reads its link
	waitUntil(t, func() bool { l := srv.link(victim.id); return l != nil && l.streams.Load() })
	hostile.write(t, appendStreamFrame(nil, frameOpen, ref(victim.id, 1), nil))
	waitUntil(t, func() bool { return srv.Streams() == 1 })
	chunk := make([]byte, streamChunk)
	victimLink := srv.link(victim.id)
	var peak int64
	for sent := 0; sent < 64<<20 && srv.Streams() == 1; sent += len(chunk) {
		hostile.write(t, appendStreamFrame(nil, frameData, ref(victim.id, 1), chunk))
		peak = max(peak, victimLink.qStream.Load())
	}
	if limit := int64(maxStreamWindow + streamBufSize); peak > limit {
		t.Errorf("the relay held %d KiB for one stream, want at most %d KiB", peak>>10, limit>>10)
	}
	waitUntil(t, func() bool { return srv.Streams() == 0 })
	if got := hostile.closes(300 * time.Millisecond); got[closeOverrun] != 1 {
		t.Errorf("the sender heard %v, want one overrun", got)
	}
}

// TestStreamControlRate: stream control frames (here WINDOW, which the
// relay forwards) count against the sender's PeerRate as packets do, at
// least MinPacketCost each: 8,192 of them at 1 MiB/s take two seconds to
// get through, not milliseconds.
func TestStreamControlRate(t *testing.T) {
	const rate = 1 << 20
	sa, srv := startStreamRelay(t, ServerConfig{PeerRate: rate, PeerBurst: 64 << 10, TotalRate: -1})
	a := dialRaw(t, sa, true)
	b := dialRaw(t, sa, true)
	waitUntil(t, func() bool { l := srv.link(b.id); return l != nil && l.streams.Load() })
	const n = rate * 2 / MinPacketCost
	msg := appendStreamFrame(nil, frameOpen, ref(b.id, 1), nil)
	for i := range uint64(n) {
		msg = appendStreamFrame(msg, frameWindow, ref(b.id, 1), windowBody(i))
	}
	msg = appendFrame(msg, framePing, make([]byte, 8))
	start := time.Now()
	go a.tc.Write(msg)
	a.tc.SetReadDeadline(time.Now().Add(20 * time.Second))
	var buf []byte
	for {
		typ, _, nb, err := readFrame(a.tc, buf)
		buf = nb
		if err != nil {
			t.Fatal(err)
		}
		if typ == framePong {
			break
		}
	}
	if d := time.Since(start); d < 1500*time.Millisecond {
		t.Errorf("%d WINDOW frames at a PeerRate of 1 MiB/s went through in %v", n, d.Round(time.Millisecond))
	}
}

// TestStreamTotalRateShared: a relayed stream that wants more than the
// relay's TotalRate waits for its share without starving packets: other
// peers' packets (a fifth of the total rate) still get through.
func TestStreamTotalRateShared(t *testing.T) {
	const total = 1 << 20
	sa, srv := startStreamRelay(t, ServerConfig{TotalRate: total, PeerRate: -1})
	a := dialRaw(t, sa, true)
	b := dialRaw(t, sa, true)
	c := dialRaw(t, sa, true)
	d := dialRaw(t, sa, true)
	waitUntil(t, func() bool { l := srv.link(b.id); return l != nil && l.streams.Load() })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var streamed atomic.Int64
	go func() { // b reads what comes (its stream's DATA)
		var buf []byte
		for ctx.Err() == nil {
			b.tc.SetReadDeadline(time.Now().Add(time.Second))
			typ, body, nb, err := readFrame(b.tc, buf)
			buf = nb
			if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				return
			}
			if err == nil && typ == frameData {
				streamed.Add(int64(len(body) - streamHeader))
			}
		}
	}()
	a.write(t, appendStreamFrame(nil, frameOpen, ref(b.id, 1), nil))
	go func() { // a sends as fast as the relay takes it
		chunk := appendStreamFrame(nil, frameData, ref(b.id, 1), make([]byte, streamChunk))
		for ctx.Err() == nil {
			a.tc.SetWriteDeadline(time.Now().Add(time.Second))
			a.tc.Write(chunk)
		}
	}()
	time.Sleep(500 * time.Millisecond)
	got := make(chan int, 1)
	go func() {
		n := 0
		var buf []byte
		d.tc.SetReadDeadline(time.Now().Add(3 * time.Second))
		for {
			typ, _, nb, err := readFrame(d.tc, buf)
			buf = nb
			if err != nil {
				got <- n
				return
			}
			if typ == framePacket {
				n++
			}
		}
	}()
	const sent = 200 // 1000 bytes every 5 ms: a fifth of the total rate
	start, before := time.Now(), streamed.Load()
	for range sent {
		c.write(t, appendFrame(nil, framePacket, d.id[:], make([]byte, 1000)))
		time.Sleep(5 * time.Millisecond)
	}
	s, dt := streamed.Load()-before, time.Since(start)
	if n := <-got; n < sent/2 {
		t.Errorf("%d of %d packets forwarded while a stream used the rest of the total rate", n, sent)
	}
	if rate := float64(s) / dt.Seconds(); rate < total/2 {
		t.Errorf("the stream got %.0f KiB/s of the total %d KiB/s beside the packets", rate/1024, total>>10)
	}
}

// TestStreamOpenAfterRelink: a peer whose link was replaced by a newer
// one opens streams on the new link with numbers its old link used; the
// old link's streams, not yet dropped (its reading still waits for the
// rate), do not make the relay refuse them as duplicates.
func TestStreamOpenAfterRelink(t *testing.T) {
	sa, srv := startStreamRelay(t, ServerConfig{PeerRate: 16 << 10, PeerBurst: 16 << 10, TotalRate: -1})
	k, _ := identity.GenerateKey()
	old := dialRawKey(t, sa, true, k)
	b := dialRaw(t, sa, true)
	waitUntil(t, func() bool { l := srv.link(b.id); return l != nil && l.streams.Load() })
	old.write(t, appendStreamFrame(nil, frameOpen, ref(b.id, 1), nil))
	waitUntil(t, func() bool { return srv.Streams() == 1 })
	// The old link's reading waits about 3 s for its rate.
	var burst []byte
	for range 4 {
		burst = appendStreamFrame(burst, frameData, ref(b.id, 1), make([]byte, streamChunk))
	}
	old.write(t, burst)
	time.Sleep(100 * time.Millisecond)
	fresh := dialRawKey(t, sa, true, k)
	fresh.write(t, appendStreamFrame(nil, frameOpen, ref(b.id, 1), nil))
	if got := fresh.closes(time.Second); len(got) != 0 {
		t.Errorf("OPEN on the new link answered with CLOSE %v", got)
	}
	// b heard the old stream end before the new one opened.
	var seq []byte
	b.tc.SetReadDeadline(time.Now().Add(time.Second))
	for {
		typ, body, _, err := readFrame(b.tc, nil)
		if err != nil {
			break
		}
		if r, _, _ := parseStream(body); (typ == frameOpen || typ == frameClose) && r == ref(k.ID(), 1|acceptorBit) {
			seq = append(seq, typ)
		}
	}
	if want := []byte{frameOpen, frameClose, frameOpen}; string(seq) != string(want) {
		t.Errorf("b heard frames % x about the stream, want % x (OPEN, CLOSE gone, OPEN)", seq, want)
	}
}

// TestStreamFinNotDropped: a CLOSE fin is passed on even when the
// receiver's queue is at its room for stream control frames (filled by
// another peer's WINDOW floods): a dropped fin would leave the receiver
// waiting for the end of a stream forever.
func TestStreamFinNotDropped(t *testing.T) {
	sa, srv := startStreamRelay(t, ServerConfig{PeerRate: -1, TotalRate: -1})
	a := dialRaw(t, sa, true)
	hostile := dialRaw(t, sa, true)
	victim := dialRaw(t, sa, true) // reads its link only at the end
	waitUntil(t, func() bool { l := srv.link(victim.id); return l != nil && l.streams.Load() })
	a.write(t, appendStreamFrame(nil, frameOpen, ref(victim.id, 1), nil))
	waitUntil(t, func() bool { return srv.Streams() == 1 })
	// The hostile peer's streams 1-4 carry 3 MiB each (within the
	// window): the relay's writer to the victim gets stuck.
	for id := uint32(1); id <= 4; id++ {
		b := appendStreamFrame(nil, frameOpen, ref(victim.id, id), nil)
		for range 3 << 20 / streamChunk {
			b = appendStreamFrame(b, frameData, ref(victim.id, id), make([]byte, streamChunk))
		}
		hostile.write(t, b)
	}
	vl := srv.link(victim.id)
	waitUntil(t, func() bool { return srv.Streams() == 5 && vl.qData.Load() > 0 })
	// Stream 5: a WINDOW flood until the relay resets it.
	hostile.write(t, appendStreamFrame(nil, frameOpen, ref(victim.id, 5), nil))
	waitUntil(t, func() bool { return srv.Streams() == 6 })
	for i := uint64(0); i < 1_000_000 && srv.Streams() == 6; i += 1000 {
		var b []byte
		for j := range uint64(1000) {
			b = appendStreamFrame(b, frameWindow, ref(victim.id, 5), windowBody(i+j))
		}
		hostile.write(t, b)
	}
	waitUntil(t, func() bool { return srv.Streams() == 5 })
	a.write(t, appendStreamFrame(nil, frameClose, ref(victim.id, 1), []byte{closeFin}))
	time.Sleep(100 * time.Millisecond)
	victim.tc.SetReadDeadline(time.Now().Add(10 * time.Second))
	var buf []byte
	for {
		typ, body, nb, err := readFrame(victim.tc, buf)
		buf = nb
		if err != nil {
			t.Fatalf("the victim never heard a's fin: %v", err)
		}
		if r, rest, _ := parseStream(body); typ == frameClose && r == ref(a.id, 1|acceptorBit) {
			if rest[0] != closeFin {
				t.Fatalf("a's stream ended with code %d, want fin", rest[0])
			}
			break
		}
	}
}
