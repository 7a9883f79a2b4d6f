package pathsock

import (
	"net/netip"
	"testing"
	"time"
)

// TestNamedKeysAliasesAndFallback: a named peer keeps one virtual
// address; aliases count as its sources without moving its sends; a
// direct path falls back to the forwarded one and Expire removes only idle
// peers nobody keeps.
func TestNamedKeysAliasesAndFallback(t *testing.T) {
	p := newPair(t)
	k1, err := p.a.Key("peer-b")
	if err != nil {
		t.Fatal(err)
	}
	if k2, _ := p.a.Key("peer-b"); k2 != k1 {
		t.Fatalf("second Key %v, first %v", k2, k1)
	}
	if k, ok := p.a.Lookup("peer-b"); !ok || k != k1 || p.a.Name(k1) != "peer-b" {
		t.Fatalf("Lookup %v %v, Name %q", k, ok, p.a.Name(k1))
	}
	fwd := &memPath{to: p.b, as: p.bPeer}
	if err := p.a.SetFallback(k1, fwd); err != nil {
		t.Fatal(err)
	}
	if d, f, _ := p.a.Current(k1); d.IsValid() || f != fwd {
		t.Fatalf("after SetFallback: direct %v fwd %v", d, f)
	}
	alias := netip.MustParseAddrPort("192.0.2.7:4000")
	p.a.AddAlias(k1, alias)
	if d, _, _ := p.a.Current(k1); d.IsValid() {
		t.Fatal("an alias became the direct path")
	}
	p.a.SetDirect(k1, p.bReal)
	if d, _, _ := p.a.Current(k1); d != p.bReal {
		t.Fatalf("direct %v", d)
	}
	if !p.a.Fallback(k1) {
		t.Fatal("Fallback refused")
	}
	if d, f, _ := p.a.Current(k1); d.IsValid() || f != fwd {
		t.Fatalf("after Fallback: direct %v fwd %v", d, f)
	}
	if p.a.Fallback(k1) {
		t.Fatal("Fallback without a direct path")
	}
	for i := range 2 * maxAliases {
		p.a.AddAlias(k1, netip.AddrPortFrom(alias.Addr(), uint16(5000+i)))
	}
	p.a.mu.RLock()
	n := len(p.a.byVirt[k1].aliases)
	p.a.mu.RUnlock()
	if n != maxAliases {
		t.Fatalf("%d aliases, want the bound %d", n, maxAliases)
	}
	time.Sleep(20 * time.Millisecond)
	if got := p.a.Expire(10*time.Millisecond, func(v netip.AddrPort) bool { return v == k1 }); got != 1 {
		t.Fatalf("expired %d, want 1 (the anonymous peer)", got)
	}
	if _, ok := p.a.Lookup("peer-b"); !ok {
		t.Fatal("a kept peer expired")
	}
	p.a.Expire(10*time.Millisecond, nil)
	if _, ok := p.a.Lookup("peer-b"); ok {
		t.Fatal("Expire kept an idle peer")
	}
}
