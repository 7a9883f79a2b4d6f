package reach_test

import (
	"context"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
	"github.com/reachp2p/reach/stream"
)

// TestDirectTCP: a node whose ladder is direct-tcp alone reaches a peer's
// TCP listener: the session is a TLS+yamux one on both sides (strategy
// direct-tcp, transport tcp), carries 256 KiB intact both ways, and the
// listener tracks it and serves its streams like a QUIC one. With the full
// ladder the same pair connects over QUIC (direct, udp), and the listener
// keeps no TCP session from that dial.
func TestDirectTCP(t *testing.T) {
	rs := rbServer(t)
	lis := rbNode(t, "lis", rs.ConnectString())
	reachlab.Echo(t, lis)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tcpOnly, err := reach.New(ctx, reach.Config{Servers: []string{rs.ConnectString()}, ListenAddr: rbLoopback,
		Strategies: []string{reach.StrategyDirectTCP}, Logger: natlab.TestLogger(t).With("n", "tcp")})
	if err != nil {
		t.Fatal(err)
	}
	defer tcpOnly.Close()
	sess := rbCheckDial(t, tcpOnly, lis)
	if sess.Strategy() != reach.StrategyDirectTCP || sess.Transport() != stream.TransportTCP {
		t.Errorf("dialler's session: strategy %q transport %q, want direct-tcp over tcp", sess.Strategy(), sess.Transport())
	}
	theirs := lis.Sessions()
	if len(theirs) != 1 || theirs[0].Strategy() != reach.StrategyDirectTCP || theirs[0].Transport() != stream.TransportTCP ||
		theirs[0].RemotePeer() != tcpOnly.ID() {
		t.Errorf("listener's sessions %v, want one direct-tcp session over tcp from the dialler", theirs)
	}
	// A second stream on the same session: the node reuses it.
	again := rbCheckDial(t, tcpOnly, lis)
	if again != sess {
		t.Errorf("second dial made a new session (%v), want the open one", again)
	}

	if st := lis.Status(); st.TCPListener.Port() == 0 || st.TCP.Sessions != 1 || st.TCP.Pending != 0 {
		t.Errorf("listener's status: TCP listener %v, %+v; want one session", st.TCPListener, st.TCP)
	}

	full := rbNode(t, "full", rs.ConnectString())
	s2 := rbCheckDial(t, full, lis)
	if s2.Strategy() != reach.StrategyDirect || s2.Transport() != stream.TransportUDP {
		t.Errorf("full ladder: strategy %q transport %q, want direct over udp", s2.Strategy(), s2.Transport())
	}
	for _, s := range lis.Sessions() {
		if s.RemotePeer() == full.ID() && s.Transport() != stream.TransportUDP {
			t.Errorf("listener has a %s session (%s) from the full-ladder dial", s.Transport(), s.Strategy())
		}
	}
}
