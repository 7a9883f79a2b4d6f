package e2e_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
)

// seqSym is the sequential symmetric NAT kind (natlab.SymmetricSeq).
var seqSym = natlab.Kind(natlab.SymmetricSeq)

// TestLabAllocation: a node learns how its NAT allocates ports: "sequential
// +1" behind a symmetric-seq router (both firewall variants), "random"
// behind the random symmetric one, nothing behind a port-restricted cone
// (its mapping does not vary).
func TestLabAllocation(t *testing.T) {
	s := reachlab.NewScenario(t, reachlab.ServerConfig{})
	cfg := reach.Config{DisablePortMapping: true, UpgradeInterval: -1}
	for i, tc := range []struct {
		site       natlab.SiteConfig
		mapping    string
		allocation string
	}{
		{natlab.SiteConfig{Kind: seqSym}, "varies", "sequential +1"},
		{natlab.SiteConfig{Kind: seqSym, Firewall: natlab.LinuxHost, ISP: true}, "varies", "sequential +1"},
		{natlab.SiteConfig{Kind: natlab.Kind(natlab.Symmetric)}, "varies", "random"},
		{natlab.SiteConfig{Kind: natlab.Kind(natlab.PortRestricted)}, "independent", ""},
	} {
		name := string(tc.site.Kind) + "/" + string(tc.site.Firewall)
		t.Run(name, func(t *testing.T) {
			site := s.SiteWith(t, fmt.Sprintf("al%d", i), tc.site)
			n := s.Node(t, site.Host, cfg)
			reachlab.MustWaitFor(t, 10*time.Second, "the mapping measured", func() bool { return n.Mapping() != "" })
			// The allocation is measured right after the mapping.
			reachlab.WaitFor(3*time.Second, func() bool { return n.Allocation() != "" })
			st := n.Status()
			t.Logf("%s: mapping %q, allocation %q", name, st.Mapping, st.Allocation)
			if st.Mapping != tc.mapping || st.Allocation != tc.allocation {
				t.Errorf("mapping %q allocation %q, want %q %q", st.Mapping, st.Allocation, tc.mapping, tc.allocation)
			}
		})
	}
}
