package natlab

import (
	"context"
	"fmt"
	"net/netip"
)

// blockTable is the nftables table Block fills, in the router's
// namespace, apart from the router's own rules.
const blockTable = "reach_block"

// Block makes the router drop every forwarded packet to or from remote (a
// cut path: a firewall rule, a link down between the two, a peer that
// moved away), before its NAT rules see them. Unblock removes every such
// rule of the router.
func (r *Router) Block(ctx context.Context, remote netip.Addr) error {
	fam := "ip"
	if remote.Is6() && !remote.Is4In6() {
		fam = "ip6"
	}
	rules := fmt.Sprintf(`table inet %[1]s {
	chain block_in {
		type filter hook prerouting priority -310; policy accept;
		%[2]s saddr %[3]s drop
	}
	chain block_out {
		type filter hook forward priority -10; policy accept;
		%[2]s daddr %[3]s drop
	}
}
`, blockTable, fam, remote.Unmap())
	if err := runInput(ctx, rules, "ip", "netns", "exec", r.ns, "nft", "-f", "-"); err != nil {
		return fmt.Errorf("natlab: block %v on %s: %w", remote, r.name, err)
	}
	return nil
}

// Unblock removes the rules Block added on the router.
func (r *Router) Unblock(ctx context.Context) error {
	if err := run(ctx, "ip", "netns", "exec", r.ns, "nft", "delete", "table", "inet", blockTable); err != nil {
		return fmt.Errorf("natlab: unblock on %s: %w", r.name, err)
	}
	return nil
}
