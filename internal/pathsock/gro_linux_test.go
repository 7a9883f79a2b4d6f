//go:build linux

package pathsock

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/net/ipv4"
)

// groBatchOf is n datagrams of size bytes (the last tail bytes) with
// first byte first, each numbered in its second and third bytes.
func groBatchOf(first byte, n, size, tail int) []byte {
	var b []byte
	for i := range n {
		l := size
		if i == n-1 {
			l = tail
		}
		d := bytes.Repeat([]byte{byte(i)}, l)
		d[0], d[1], d[2] = first, byte(i>>8), byte(i)
		b = append(b, d...)
	}
	return b
}

// groConns returns a Conn on loopback with GRO and a Conn to send to it
// from (skipping the test where the kernel refuses UDP_GRO); both close
// with the test.
func groConns(t *testing.T) (c, snd *Conn) {
	t.Helper()
	c = New(udpLoopback(t))
	t.Cleanup(func() { c.Close() })
	if !c.EnableGRO() {
		t.Skip("the kernel refused UDP_GRO")
	}
	snd = New(udpLoopback(t))
	t.Cleanup(func() { snd.Close() })
	return c, snd
}

// TestGROSplitsRuns: with GRO a sender's GSO batch reaches the Conn as one
// coalesced message (the reader saw a segment size), and ReadBatch hands it
// out as the datagrams that were sent, in order, from the sender's address,
// across calls whose batches are smaller than the run.
func TestGROSplitsRuns(t *testing.T) {
	c, snd := groConns(t)
	const n, size, tail = 40, 1000, 321
	b := groBatchOf(0x45, n, size, tail)
	if err := snd.WriteSegments(b, size, apOf(c.udp)); err != nil {
		t.Fatal(err)
	}
	ms := make([]ipv4.Message, 3) // fewer than the run: it spans calls
	for i := range ms {
		ms[i].Buffers = [][]byte{make([]byte, 1452)}
		ms[i].OOB = make([]byte, 64)
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	for got := 0; got < n; {
		k, err := c.ReadBatch(ms, 0)
		if err != nil {
			t.Fatalf("after %d datagrams: %v", got, err)
		}
		for _, m := range ms[:k] {
			want := b[got*size : min((got+1)*size, len(b))]
			if !bytes.Equal(m.Buffers[0][:m.N], want) {
				t.Fatalf("datagram %d: %d bytes %x..., want %d bytes %x...", got, m.N, m.Buffers[0][:3], len(want), want[:3])
			}
			if from := addrPortOf(m.Addr); from != apOf(snd.udp) {
				t.Fatalf("datagram %d from %v, want %v", got, from, apOf(snd.udp))
			}
			got++
		}
	}
	if c.groRuns.Load() == 0 {
		t.Error("no coalesced message was read: the test did not exercise GRO")
	}
}

// TestGROIntercept: an InterceptFunc gets each datagram of a coalesced run
// on its own (consuming some, translating others to a peer's virtual
// address), and the datagrams it does not take still reach the reader in
// order.
func TestGROIntercept(t *testing.T) {
	c, snd := groConns(t)
	virt, err := c.AddPeer()
	if err != nil {
		t.Fatal(err)
	}
	var taken []int
	c.Intercept(0x2d, netip.AddrPort{}, func(b []byte, from netip.AddrPort) (int, netip.AddrPort) {
		if from != apOf(snd.udp) {
			t.Errorf("intercepted from %v", from)
		}
		i := int(b[1])<<8 | int(b[2])
		if i%2 == 0 {
			taken = append(taken, i)
			return 0, netip.AddrPort{}
		}
		b[0] = 0x44 // as a QUIC packet from the peer
		return len(b), virt
	})
	const n, size = 30, 1200
	if err := snd.WriteSegments(groBatchOf(0x2d, n, size, size), size, apOf(c.udp)); err != nil {
		t.Fatal(err)
	}
	if err := snd.WriteSegments(groBatchOf(0x46, 5, 700, 700), 700, apOf(c.udp)); err != nil {
		t.Fatal(err)
	}
	got, from := readAll(t, c, n/2+5)
	if len(got) != n/2+5 {
		t.Fatalf("read %d datagrams, want %d", len(got), n/2+5)
	}
	for j, g := range got[:n/2] {
		if i := int(g[1])<<8 | int(g[2]); i != 2*j+1 || g[0] != 0x44 || len(g) != size || from[j] != virt {
			t.Fatalf("read %d: number %d first %#x len %d from %v; want number %d from %v", j, i, g[0], len(g), from[j], 2*j+1, virt)
		}
	}
	for j, g := range got[n/2:] {
		if i := int(g[1])<<8 | int(g[2]); i != j || g[0] != 0x46 || len(g) != 700 || from[n/2+j] != apOf(snd.udp) {
			t.Fatalf("second run, read %d: number %d len %d from %v", j, i, len(g), from[n/2+j])
		}
	}
	if len(taken) != n/2 {
		t.Errorf("the func consumed %d datagrams, want %d", len(taken), n/2)
	}
	for j, i := range taken {
		if i != 2*j {
			t.Fatalf("consumed %v, want the even ones in order", taken)
		}
	}
}

// TestGROQUICSession: quic-go on two Conns with GRO moves 16 MiB each way
// intact (its GSO batches arrive coalesced and are split for it).
func TestGROQUICSession(t *testing.T) {
	p := newPair(t)
	if !p.a.EnableGRO() || !p.b.EnableGRO() {
		t.Skip("the kernel refused UDP_GRO")
	}
	p.direct(t)
	client, server := session(t, &quic.Transport{Conn: p.a}, &quic.Transport{Conn: p.b}, p.aPeer)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	payload := make([]byte, 16<<20)
	rand.Read(payload)
	errc := make(chan error, 1)
	go func() {
		st, err := server.AcceptStream(ctx)
		if err != nil {
			errc <- err
			return
		}
		_, err = io.Copy(st, st) // echo
		st.Close()
		errc <- err
	}()
	st, err := client.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st.SetDeadline(time.Now().Add(30 * time.Second))
	go func() {
		st.Write(payload)
		st.Close()
	}()
	back, err := io.ReadAll(st)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, payload) {
		t.Fatalf("echoed %d bytes, not the %d sent", len(back), len(payload))
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if p.a.groRuns.Load() == 0 || p.b.groRuns.Load() == 0 {
		t.Errorf("coalesced messages read: %d and %d; the test did not exercise GRO", p.a.groRuns.Load(), p.b.groRuns.Load())
	}
}
