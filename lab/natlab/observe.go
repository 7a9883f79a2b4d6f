package natlab

import (
	"context"
	"fmt"
	"strings"
)

// Dump returns what a failed traversal needs for diagnosis: the router's
// nftables ruleset (with the cone NATs' port map and contacted set, i.e.
// the live NAT mappings) and its conntrack table.
func (r *Router) Dump(ctx context.Context) string {
	var b strings.Builder
	fmt.Fprintf(&b, "=== router %s (%s) wan=%s lan=%s ===\n", r.name, r.cfg.NAT, r.addr4, r.cfg.LAN)
	if out, err := output(ctx, "ip", "netns", "exec", r.ns, "nft", "list", "ruleset"); err != nil {
		fmt.Fprintf(&b, "nft: %v\n", err)
	} else {
		b.WriteString(out)
	}
	b.WriteString("--- conntrack ---\n")
	b.WriteString(r.Conntrack(ctx))
	return b.String()
}

// Conntrack returns the router's conntrack table (conntrack -L), one entry
// a line: each shows the original tuple and the reply tuple, so the NAT
// mapping of a flow is the reply tuple's destination.
func (r *Router) Conntrack(ctx context.Context) string {
	out, err := output(ctx, "ip", "netns", "exec", r.ns, "conntrack", "-L")
	if err != nil {
		return fmt.Sprintf("conntrack: %v\n", err)
	}
	return out
}

// FlushConntrack forgets every mapping on the router (like a reboot of the
// NAT table).
func (r *Router) FlushConntrack(ctx context.Context) error {
	return run(ctx, "ip", "netns", "exec", r.ns, "conntrack", "-F")
}

// Dump returns every router's Dump.
func (l *Lab) Dump(ctx context.Context) string {
	var b strings.Builder
	for _, r := range l.Routers() {
		b.WriteString(r.Dump(ctx))
	}
	return b.String()
}
