package reach

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/reachp2p/reach/identity"
)

// TestDialWithoutServer: a node without servers and without Config.LAN
// (the default: no multicast) fails a dial at once with ErrNoServers.
// LAN itself is tested between lab namespaces (TestCLILabLAN,
// TestLabResolveAndFlood), never on this machine's interfaces.
func TestDialWithoutServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := New(ctx, Config{ListenAddr: netip.MustParseAddrPort("127.0.0.1:0")})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if n.lan != nil {
		t.Fatal("a node without Config.LAN answers mDNS")
	}
	k, _ := identity.GenerateKey()
	start := time.Now()
	if _, err := n.DialSession(ctx, k.ID()); !errors.Is(err, ErrNoServers) || time.Since(start) > time.Second {
		t.Errorf("dial: %v after %v; want ErrNoServers at once", err, time.Since(start))
	}
}
