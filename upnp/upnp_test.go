package upnp_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/reachp2p/reach/upnp"
)

// TestHooksOnly: with socket hooks that refuse, every protocol fails
// with the hooks' error: none of them opens a socket another way (in the
// lab that would be a socket in the root namespace).
func TestHooksOnly(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	errHook := errors.New("hook refused")
	var listens, dials atomic.Int32
	m, err := upnp.Start(upnp.Config{
		Port: 4242,
		ListenPacket: func(network, addr string) (net.PacketConn, error) {
			listens.Add(1)
			return nil, errHook
		},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			return nil, errHook
		},
		InterfaceAddrs: func() ([]net.Addr, error) {
			return []net.Addr{&net.IPNet{IP: net.IPv4(10, 9, 0, 10), Mask: net.CIDRMask(24, 32)}}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := m.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("status: %v; ListenPacket called %d times", st.Err, listens.Load())
	if !errors.Is(st.Err, upnp.ErrNoGateway) || !errors.Is(st.Err, errHook) {
		t.Errorf("error %v: want ErrNoGateway wrapping the hook's error", st.Err)
	}
	// SSDP, PCP and NAT-PMP each asked the hook for their socket.
	if listens.Load() < 3 {
		t.Errorf("ListenPacket called %d times, want at least 3", listens.Load())
	}
	if st.External.IsValid() {
		t.Errorf("external address %v without a socket", st.External)
	}
}

func TestStartNoPort(t *testing.T) {
	if _, err := upnp.Start(upnp.Config{}); !errors.Is(err, upnp.ErrNoPort) {
		t.Errorf("Start without a port: %v, want ErrNoPort", err)
	}
}

func TestIsPublic(t *testing.T) {
	for s, want := range map[string]bool{
		"5.5.5.1": true, "203.0.113.7": true, "8.8.8.8": true, "2001:db8::1": true,
		"10.1.2.3": false, "100.64.0.1": false, "100.127.255.254": false, "172.16.0.1": false,
		"192.168.1.1": false, "127.0.0.1": false, "169.254.1.1": false, "0.0.0.0": false, "fd00::1": false,
	} {
		if got := upnp.IsPublic(netip.MustParseAddr(s)); got != want {
			t.Errorf("IsPublic(%s) = %v, want %v", s, got, want)
		}
	}
}

// TestStartTransport: a Mapper maps UDP or TCP; anything else is
// ErrBadTransport, and no port is ErrNoPort.
func TestStartTransport(t *testing.T) {
	if _, err := upnp.Start(upnp.Config{Port: 4242, Transport: "sctp"}); !errors.Is(err, upnp.ErrBadTransport) {
		t.Errorf("transport sctp: %v, want ErrBadTransport", err)
	}
	if _, err := upnp.Start(upnp.Config{Transport: upnp.TCP}); !errors.Is(err, upnp.ErrNoPort) {
		t.Errorf("no port: %v, want ErrNoPort", err)
	}
}
