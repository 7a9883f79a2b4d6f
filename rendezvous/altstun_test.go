package rendezvous

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v3"
)

// bind sends one binding request from c to to and returns the answer.
func bind(t *testing.T, c *net.UDPConn, to netip.AddrPort) *stun.Message {
	t.Helper()
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	for range 5 {
		if _, err := c.WriteToUDPAddrPort(req.Raw, to); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		buf := make([]byte, 1500)
		n, _, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			continue
		}
		m := &stun.Message{Raw: buf[:n]}
		if err := m.Decode(); err != nil {
			t.Fatal(err)
		}
		if m.TransactionID != req.TransactionID {
			continue
		}
		return m
	}
	t.Fatalf("no STUN answer from %v", to)
	return nil
}

// TestAltSTUN: the server answers binding requests on a second port too,
// and its main port's answers name that port (OTHER-ADDRESS), so one
// server is enough to tell whether a NAT's mapping varies by
// destination. DisableAltSTUN turns it off.
func TestAltSTUN(t *testing.T) {
	rs := startTestServer(t, ServerConfig{})
	alt := rs.AltSTUNAddr()
	if !alt.IsValid() || alt.Port() == rs.UDPAddr().Port() {
		t.Fatalf("alternate STUN address %v (main %v)", alt, rs.UDPAddr())
	}
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	self := c.LocalAddr().(*net.UDPAddr).AddrPort()

	main := bind(t, c, rs.UDPAddr())
	var other stun.OtherAddress
	if err := other.GetFrom(main); err != nil || other.Port != int(alt.Port()) {
		t.Fatalf("main port's OTHER-ADDRESS %v (%v), want port %d", other, err, alt.Port())
	}
	var mapped stun.XORMappedAddress
	if err := mapped.GetFrom(main); err != nil || mapped.Port != int(self.Port()) {
		t.Fatalf("mapped %v, want %v", mapped, self)
	}
	second := bind(t, c, netip.AddrPortFrom(rs.UDPAddr().Addr(), uint16(other.Port)))
	if err := mapped.GetFrom(second); err != nil || mapped.Port != int(self.Port()) {
		t.Fatalf("alternate port mapped %v, want %v", mapped, self)
	}
	if second.Contains(stun.AttrOtherAddress) {
		t.Errorf("the alternate port names an OTHER-ADDRESS too")
	}

	off := startTestServer(t, ServerConfig{DisableAltSTUN: true})
	if off.AltSTUNAddr().IsValid() {
		t.Fatalf("DisableAltSTUN: alternate address %v", off.AltSTUNAddr())
	}
	if bind(t, c, off.UDPAddr()).Contains(stun.AttrOtherAddress) {
		t.Errorf("DisableAltSTUN: OTHER-ADDRESS still named")
	}
}
