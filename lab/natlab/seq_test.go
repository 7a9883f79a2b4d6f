package natlab

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// mappingPorts sends from one LAN socket of h to each destination in
// turn and returns the external port each destination saw.
func mappingPorts(t *testing.T, h *Host, dsts []*Host, ports []uint16) []uint16 {
	t.Helper()
	in, err := h.ListenUDP(netip.AddrPortFrom(netip.IPv4Unspecified(), 0))
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	var seen []uint16
	for _, d := range dsts {
		for _, p := range ports {
			rc, err := d.ListenUDP(netip.AddrPortFrom(d.Addr(), p))
			if err != nil {
				t.Fatal(err)
			}
			_, from, err := Probe(in, netip.AddrPortFrom(d.Addr(), p), "map", rc, 3*time.Second)
			rc.Close()
			if err != nil {
				t.Fatalf("to %s:%d: %v", d.Addr(), p, err)
			}
			seen = append(seen, from.Port())
		}
	}
	return seen
}

// TestSymmetricSequential: a symmetric-seq router gives one LAN socket a
// new external port for every destination (address and port), each the
// previous one plus 1, in both firewall variants; the random kind does
// not; both classify as address-and-port-dependent mapping and filtering.
func TestSymmetricSequential(t *testing.T) {
	l := NewT(t)
	ctx := ctxT(t, 2*time.Minute)
	a, b, c := publicTrio(t, ctx, l)
	for i, tc := range []struct {
		nat NAT
		fw  Firewall
	}{{SymmetricSeq, Home}, {SymmetricSeq, LinuxHost}, {Symmetric, Home}} {
		name := fmt.Sprintf("s%d", i)
		rt, err := l.AddRouter(ctx, RouterConfig{Name: name, NAT: tc.nat, Firewall: tc.fw})
		if err != nil {
			t.Fatal(err)
		}
		h, err := rt.AddHost(ctx, name+"h")
		if err != nil {
			t.Fatal(err)
		}
		cl, err := Classify(h, a, b, c)
		if err != nil {
			t.Fatalf("%s/%s: %v", tc.nat, tc.fw, err)
		}
		if cl.Mapping != APDM || cl.Filtering != APDF {
			t.Errorf("%s/%s: classified %s", tc.nat, tc.fw, cl)
		}
		// Six destinations: two ports on each of three hosts, from a
		// fresh socket.
		seen := mappingPorts(t, h, []*Host{a, b, c}, []uint16{5001, 5002})
		deltas := make([]int, len(seen)-1)
		seq := true
		for j := 1; j < len(seen); j++ {
			deltas[j-1] = int(seen[j]) - int(seen[j-1])
			seq = seq && deltas[j-1] == 1
		}
		t.Logf("%s/%s: ports %v, deltas %v", tc.nat, tc.fw, seen, deltas)
		if want := tc.nat == SymmetricSeq; seq != want {
			t.Errorf("%s/%s: sequential = %v, want %v (ports %v)", tc.nat, tc.fw, seq, want, seen)
		}
		if tc.nat == SymmetricSeq {
			checkSeqClash(t, h, a, rt, tc.fw, seen[len(seen)-1])
		}
		if d := rt.Dump(ctx); tc.nat == SymmetricSeq && (len(d) > 20000 || !strings.Contains(d, fmt.Sprintf("0 : %d, ..., %d : %d", SeqPortBase, SeqPortCount-1, SeqPortBase+SeqPortCount-1))) {
			t.Errorf("%s: the router dump lists the seqport map in full (%d bytes)", tc.fw, len(d))
		}
		if tc.nat == SymmetricSeq && (seen[0] < SeqPortBase || seen[0] >= SeqPortBase+SeqPortCount) {
			t.Errorf("%s: port %d outside [%d, %d)", tc.nat, seen[0], SeqPortBase, SeqPortBase+SeqPortCount)
		}
	}
}

// checkSeqClash: a packet from a:5003 to the router's next port arrives
// before the LAN host sends to a:5003. A home router drops it; a
// linux-host router accepts it into a conntrack entry that takes that
// port for a:5003, so the LAN host's first packet there is dropped and the
// next one gets the port after.
func checkSeqClash(t *testing.T, h, a *Host, rt *Router, fw Firewall, last uint16) {
	t.Helper()
	early, err := a.ListenUDP(netip.AddrPortFrom(a.Addr(), 5003))
	if err != nil {
		t.Fatal(err)
	}
	defer early.Close()
	if _, err := early.WriteToUDPAddrPort([]byte("early"), netip.AddrPortFrom(rt.WAN(), last+1)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	in, err := h.ListenUDP(netip.AddrPortFrom(netip.IPv4Unspecified(), 0))
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	var got uint16
	for try := 0; try < 3 && got == 0; try++ {
		if _, from, err := Probe(in, netip.AddrPortFrom(a.Addr(), 5003), "late", early, 500*time.Millisecond); err == nil {
			got = from.Port()
		}
	}
	want := last + 1
	if fw == LinuxHost {
		want = last + 2
	}
	t.Logf("%s: after an early packet to port %d, the LAN host's flow got port %d", fw, last+1, got)
	if got != want {
		t.Errorf("%s: port %d after an early packet to %d, want %d", fw, got, last+1, want)
	}
}
