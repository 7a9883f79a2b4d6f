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
	var wan, lan []string
	if !r.cfg.IPv6Only {
		wan, lan = append(wan, r.addr4.String()), append(lan, r.cfg.LAN.String())
	}
	if r.cfg.IPv6 {
		wan, lan = append(wan, r.wan6.String()), append(lan, r.lan.v6.String())
	}
	fmt.Fprintf(&b, "=== router %s (%s, %s) wan=%s lan=%s ===\n", r.name, r.cfg.NAT, r.cfg.Firewall,
		strings.Join(wan, ","), strings.Join(lan, ","))
	if out, err := output(ctx, "ip", "netns", "exec", r.ns, "nft", "list", "ruleset"); err != nil {
		fmt.Fprintf(&b, "nft: %v\n", err)
	} else {
		b.WriteString(shortSeqMap(out))
	}
	b.WriteString("--- conntrack ---\n")
	b.WriteString(r.Conntrack(ctx))
	return b.String()
}

// Conntrack returns the router's conntrack table (conntrack -L), one entry
// a line: each shows the original tuple and the reply tuple, so the NAT
// mapping of a flow is the reply tuple's destination. An IPv6 router's
// table lists its IPv6 flows too.
func (r *Router) Conntrack(ctx context.Context) string {
	var b strings.Builder
	fams := []string{"ipv4"}
	if r.cfg.IPv6 {
		fams = append(fams, "ipv6")
	}
	for _, f := range fams {
		out, err := output(ctx, "ip", "netns", "exec", r.ns, "conntrack", "-L", "-f", f)
		if err != nil {
			fmt.Fprintf(&b, "conntrack -f %s: %v\n", f, err)
			continue
		}
		b.WriteString(out)
	}
	return b.String()
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

// shortSeqMap replaces the elements of a SymmetricSeq router's seqport
// map (SeqPortCount lines of "N : port") with a one-line summary.
func shortSeqMap(ruleset string) string {
	i := strings.Index(ruleset, "map seqport {")
	if i < 0 {
		return ruleset
	}
	j := strings.Index(ruleset[i:], "elements = {")
	if j < 0 {
		return ruleset
	}
	start := i + j + len("elements = {")
	end := strings.Index(ruleset[start:], "}")
	if end < 0 {
		return ruleset
	}
	return ruleset[:start] + fmt.Sprintf(" 0 : %d, ..., %d : %d ", SeqPortBase, SeqPortCount-1, SeqPortBase+SeqPortCount-1) + ruleset[start+end:]
}
