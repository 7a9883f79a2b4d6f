package reach

import (
	"net"
	"net/netip"
	"slices"
	"time"
)

// Network changes (issue 13). A laptop that moves from Wi-Fi to a phone's
// hotspot, or a host whose DHCP lease gives it a new address, keeps its
// sessions: its NAT gives it a new mapping, and the direct paths its peers
// knew it by go silent. Silence alone is found late on an idle session
// (liveness.go: nothing sent, nothing to judge until the next keepalive),
// so the node also lists its own addresses (Config.InterfaceAddrs) every
// interfacePoll; when they change it measures its NAT's mapping again and
// checks every direct path at once (a ping each; checkPath's probe), so
// that a dead one falls back to the relay within about a second and the
// search for a new direct path starts, instead of after the next
// keepalive and three silent seconds.

// interfacePoll is how often the node lists its addresses: one call into
// the kernel (getifaddrs) a second.
const interfacePoll = time.Second

// watchInterfaces notices changes of the node's addresses until it
// closes.
func (n *Node) watchInterfaces() {
	prev, err := n.localAddrs()
	if err != nil {
		n.log.Debug("not watching the node's addresses", "err", err)
		return
	}
	t := time.NewTicker(interfacePoll)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-n.ctx.Done():
			return
		}
		cur, err := n.localAddrs()
		if err != nil || slices.Equal(cur, prev) {
			continue
		}
		n.log.Info("network changed", "addrs", cur, "was", prev)
		prev = cur
		n.networkChanged()
	}
}

// localAddrs returns the node's unicast addresses, sorted (loopback and
// link-local ones left out: they say nothing of the paths to peers).
func (n *Node) localAddrs() ([]netip.Addr, error) {
	addrs, err := n.cfg.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(ipn.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsMulticast() || ip.IsUnspecified() {
			continue
		}
		out = append(out, ip)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out), nil
}

// networkChanged re-measures the mapping and checks every direct path of
// a session that can move.
func (n *Node) networkChanged() {
	if n.mapped != nil {
		n.goRun(n.detectMapping)
	}
	paths := n.sock.Paths()
	for peer, key := range n.movablePeers() {
		direct, fwd, err := paths.Current(key)
		if err != nil || !direct.IsValid() || fwd == nil {
			continue
		}
		n.probe(peer, key, paths.Heard(key))
	}
}
