package candidate

import (
	"encoding/json"
	"net/netip"
	"testing"
)

func TestClassifyPortsLast(t *testing.T) {
	a, ok := ClassifyPorts([]int{20001, 20002, 20004, 20005})
	if !ok || !a.Sequential() || a.Step != 1 || a.Last != 20005 || a.String() != "sequential +1" {
		t.Fatalf("got %+v %v", a, ok)
	}
	a, ok = ClassifyPorts([]int{31337, 61024, 1999, 45000})
	if !ok || a.Sequential() || a.String() != "random" {
		t.Fatalf("random ports: got %+v %v", a, ok)
	}
	if _, ok := ClassifyPorts([]int{1, 2}); ok {
		t.Fatal("two ports classified")
	}
	// A helper socket met a mapping left over from an earlier socket:
	// one step is off, the others say +1; Last is the newest.
	for _, ports := range [][]int{{20096, 20097, 20108, 20109}, {20108, 20109, 20096, 20097}} {
		a, ok = ClassifyPorts(ports)
		if !ok || !a.Sequential() || a.Step != 1 || a.Last != 20109 {
			t.Errorf("%v: got %+v", ports, a)
		}
	}
	if a, _ := ClassifyPorts([]int{20097, 20108, 20109}); a.Sequential() {
		t.Errorf("one fitting step of two called sequential: %+v", a)
	}
	seq := PortAllocation{Kind: AllocSequential, Step: 1, Last: 20010}
	if !seq.Ahead(20010) || !seq.Ahead(20500) || seq.Ahead(20009) {
		t.Error("Ahead")
	}
}

// TestPredicted: a sequential peer's next ports on its reflexive IPv4
// address, capped, skipping known candidates; nothing for other peers or
// addresses the scope forbids.
func TestPredicted(t *testing.T) {
	refl := netip.MustParseAddrPort("203.0.113.20:20003")
	seq := PeerInfo{Mapping: MappingVaries, Ports: &PortAllocation{Kind: AllocSequential, Step: 1, Last: 20002},
		Candidates: []Candidate{{Addr: netip.MustParseAddrPort("10.1.0.10:4000"), Kind: Host}, {Addr: refl, Kind: Reflexive}}}
	got := seq.Predicted(PunchScope{}, 4)
	want := []string{"203.0.113.20:20004", "203.0.113.20:20005", "203.0.113.20:20006"} // 20003 is known
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range got {
		if got[i].String() != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
	if n := len(seq.Predicted(PunchScope{}, 1000)); n > MaxPredictPorts {
		t.Errorf("%d predicted ports, cap %d", n, MaxPredictPorts)
	}
	if n := len(seq.Predicted(PunchScope{}, 0)); n != DefaultPredictPorts-1 {
		t.Errorf("%d predicted ports by default, want %d (one known)", n, DefaultPredictPorts-1)
	}
	random := seq
	random.Ports = &PortAllocation{Kind: AllocRandom}
	indep := seq
	indep.Mapping = MappingIndependent
	if random.Predicted(PunchScope{}, 8) != nil || indep.Predicted(PunchScope{}, 8) != nil {
		t.Error("predicted ports for a random or endpoint-independent peer")
	}
	v6 := seq
	v6.Candidates = []Candidate{{Addr: netip.MustParseAddrPort("[2001:db8::1]:20003"), Kind: Reflexive}}
	if v6.Predicted(PunchScope{}, 8) != nil {
		t.Error("predicted ports on IPv6 (no NAT there)")
	}
	lo := seq
	lo.Candidates = []Candidate{{Addr: netip.MustParseAddrPort("127.0.0.1:20003"), Kind: Reflexive}}
	if lo.Predicted(PunchScope{}, 8) != nil {
		t.Error("predicted ports on loopback")
	}
	top := seq
	top.Ports = &PortAllocation{Kind: AllocSequential, Step: 1, Last: 65534}
	if got := top.Predicted(PunchScope{}, 8); len(got) != 1 {
		t.Errorf("past port 65535: %v", got)
	}
	// Wire: optional, and an old peer's info (no ports) decodes to nil.
	var old PeerInfo
	if err := json.Unmarshal([]byte(`{"candidates":[],"attempt":1,"mapping":"varies"}`), &old); err != nil || old.Ports != nil {
		t.Fatalf("old info: %+v %v", old, err)
	}
	b, _ := json.Marshal(seq)
	var back PeerInfo
	if err := json.Unmarshal(b, &back); err != nil || !back.Ports.Sequential() || back.Ports.Last != 20002 {
		t.Fatalf("round trip: %s -> %+v %v", b, back.Ports, err)
	}
}
