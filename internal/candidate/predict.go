package candidate

import (
	"fmt"
	"net/netip"
	"slices"
)

// Port allocation kinds (PortAllocation.Kind): how a NAT whose mapping
// varies by destination picks the public port of a new mapping.
const (
	// AllocSequential: each new mapping's port is the previous one's plus
	// a small constant step (+1 on most such NATs).
	AllocSequential = "sequential"
	// AllocRandom: no pattern.
	AllocRandom = "random"
)

// PortAllocation is how the sender's NAT allocates public ports, as the
// sender measured it: successive new mappings from fresh destinations.
// Only meaningful with Mapping MappingVaries.
type PortAllocation struct {
	// Kind is AllocSequential or AllocRandom.
	Kind string `json:"kind"`
	// Step, for AllocSequential: the difference between successive
	// mappings' ports (never 0).
	Step int `json:"step,omitempty"`
	// Last, for AllocSequential: the public port of the newest mapping
	// the sender saw; its next mapping is expected at Last+Step, give or
	// take the other traffic through its NAT meanwhile.
	Last uint16 `json:"last,omitempty"`
}

// String says it the way netcheck and logs do: "sequential +1",
// "random", "" for nil.
func (a *PortAllocation) String() string {
	switch {
	case a == nil:
		return ""
	case a.Kind == AllocSequential:
		return fmt.Sprintf("sequential %+d", a.Step)
	}
	return a.Kind
}

// Sequential reports whether a is a usable sequential allocation.
func (a *PortAllocation) Sequential() bool {
	return a != nil && a.Kind == AllocSequential && a.Step != 0 && a.Last != 0 &&
		a.Step >= -MaxAllocStep && a.Step <= MaxAllocStep
}

// MaxAllocStep is the largest step (in absolute value) ClassifyPorts calls
// sequential; a larger one is indistinguishable from random ports.
const MaxAllocStep = 16

// ClassifyPorts names the allocation behind ports, the public ports of
// successive new mappings of one NAT, oldest first: AllocSequential when
// most steps (more than half, at least two) are within one of the median
// step, which is not zero and at most MaxAllocStep (other traffic through
// the NAT can take a port in between, and a socket can meet a mapping
// left over from an earlier one); AllocRandom otherwise. Last is the
// furthest port in the step's direction. Fewer than three ports say
// nothing (ok false).
func ClassifyPorts(ports []int) (a PortAllocation, ok bool) {
	if len(ports) < 3 {
		return PortAllocation{}, false
	}
	var deltas []int
	for i := 1; i < len(ports); i++ {
		deltas = append(deltas, ports[i]-ports[i-1])
	}
	sorted := slices.Clone(deltas)
	slices.Sort(sorted)
	step := sorted[len(sorted)/2]
	random := PortAllocation{Kind: AllocRandom}
	if step == 0 || step < -MaxAllocStep || step > MaxAllocStep {
		return random, true
	}
	fit := 0
	for _, d := range deltas {
		if d != 0 && d-step >= -1 && d-step <= 1 {
			fit++
		}
	}
	if fit < 2 || 2*fit <= len(deltas) {
		return random, true
	}
	last := slices.Max(ports)
	if step < 0 {
		last = slices.Min(ports)
	}
	if last <= 0 || last > 0xffff {
		return random, true
	}
	return PortAllocation{Kind: AllocSequential, Step: step, Last: uint16(last)}, true
}

// Ahead reports whether port is at or beyond a's Last in its step's
// direction (by less than half the port space): a fresher measurement,
// not a mapping left over from before.
func (a *PortAllocation) Ahead(port uint16) bool {
	d := int(int16(port - a.Last))
	if a.Step < 0 {
		d = -d
	}
	return d >= 0
}

// Prediction bounds: how many of a sequential peer's next ports one
// attempt punches unless told otherwise, and at most.
const (
	DefaultPredictPorts = 12
	MaxPredictPorts     = 16
)

// Predicted returns the ports a peer behind a sequential symmetric NAT is
// expected to use next, on its reflexive IPv4 address: Last+Step,
// Last+2*Step, ... n of them (at most MaxPredictPorts; n <= 0:
// DefaultPredictPorts), skipping the peer's known candidates and ports
// outside 1024-65535. Nil unless the peer's mapping varies, it measured a
// sequential allocation and it has a reflexive address s allows.
func (p PeerInfo) Predicted(s PunchScope, n int) []netip.AddrPort {
	if p.Mapping != MappingVaries || !p.Ports.Sequential() {
		return nil
	}
	if n <= 0 {
		n = DefaultPredictPorts
	}
	n = min(n, MaxPredictPorts)
	var ip netip.Addr
	for _, a := range p.Addrs(Reflexive) {
		if a.Addr().Unmap().Is4() {
			ip = a.Addr().Unmap()
			break
		}
	}
	if !ip.IsValid() || !s.Allowed(ip, p.SameLAN(s)) {
		return nil
	}
	known := map[netip.AddrPort]bool{}
	for _, a := range p.Addrs(Reflexive, Mapped, Host) {
		known[netip.AddrPortFrom(a.Addr().Unmap(), a.Port())] = true
	}
	var out []netip.AddrPort
	port := int(p.Ports.Last)
	for range n {
		port += p.Ports.Step
		if port < 1024 || port > 0xffff {
			break
		}
		if a := netip.AddrPortFrom(ip, uint16(port)); !known[a] {
			out = append(out, a)
		}
	}
	return out
}
