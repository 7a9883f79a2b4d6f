package natlab

import (
	"context"
	"fmt"
	"net/netip"
)

// Renumber gives the host the next free IPv4 address of its segment and
// takes its old one away, as a DHCP renumbering or a move to another
// access point of the same network does: sockets bound to all addresses
// stay open, connections bound to the old address break, and the NAT
// sees a new inside address (so a new mapping). It returns the new
// address.
func (h *Host) Renumber(ctx context.Context) (netip.Addr, error) {
	n := h.net
	if !h.addr4.IsValid() || !n.v4.IsValid() {
		return netip.Addr{}, fmt.Errorf("natlab: host %s has no IPv4 address to renumber", h.name)
	}
	a4, _, err := n.allocate()
	if err != nil {
		return netip.Addr{}, err
	}
	bits := n.v4.Bits()
	steps := [][]string{
		// Without this, deleting the primary address deletes the new
		// (secondary) one with it.
		{"ip", "netns", "exec", h.ns, "sysctl", "-qw", "net.ipv4.conf.eth0.promote_secondaries=1"},
		{"ip", "-n", h.ns, "addr", "add", fmt.Sprintf("%s/%d", a4, bits), "dev", "eth0"},
		{"ip", "-n", h.ns, "addr", "del", fmt.Sprintf("%s/%d", h.addr4, bits), "dev", "eth0"},
	}
	if n.gw4.IsValid() {
		steps = append(steps, []string{"ip", "-n", h.ns, "route", "replace", "default", "via", n.gw4.String()})
	}
	for _, s := range steps {
		if err := run(ctx, s...); err != nil {
			return netip.Addr{}, fmt.Errorf("natlab: renumber %s: %w", h.name, err)
		}
	}
	h.lab.mu.Lock()
	old := h.addr4
	h.addr4 = a4
	h.lab.mu.Unlock()
	h.lab.log.Debug("host renumbered", "host", h.name, "old", old, "new", a4)
	return a4, nil
}
