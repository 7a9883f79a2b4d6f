//go:build linux

package pathsock

import (
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// TestReadKeepsECN: the control messages quic-go asks for come with the
// datagram it reads: a packet sent with ECT(0) reads with its TOS byte
// (quic-go's ECN), as x/net's ReadBatch gave it.
func TestReadKeepsECN(t *testing.T) {
	s := newReadSetup(t, "udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, "127.0.0.1")
	setOpt := func(u *net.UDPConn, opt, v int) {
		rc, err := u.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var serr error
		if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, opt, v) }); err != nil || serr != nil {
			t.Fatalf("setsockopt %d: %v %v", opt, err, serr)
		}
	}
	setOpt(s.c.udp, unix.IP_RECVTOS, 1)
	setOpt(s.send, unix.IP_TOS, 0x02) // ECT(0)
	pkt := make([]byte, 100)
	pkt[0] = 0x2c
	m := s.round(t, 2, pkt)
	cms, err := unix.ParseSocketControlMessage(m.OOB[:m.NN])
	if err != nil {
		t.Fatal(err)
	}
	for _, cm := range cms {
		if cm.Header.Level == unix.IPPROTO_IP && cm.Header.Type == unix.IP_TOS && len(cm.Data) > 0 {
			if ecn := cm.Data[0] & 0x03; ecn != 0x02 {
				t.Errorf("ECN bits %#x, want ECT(0)", ecn)
			}
			return
		}
	}
	t.Errorf("no IP_TOS control message among %d bytes of OOB", m.NN)
}
