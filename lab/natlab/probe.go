package natlab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"
)

// ListenUDP opens a UDP socket inside host h on addr (zero address: all
// addresses, port 0: any port).
func (h *Host) ListenUDP(addr netip.AddrPort) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := h.Run(func() error {
		var err error
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
		return err
	})
	return c, err
}

// ListenTCP opens a TCP listener inside host h.
func (h *Host) ListenTCP(addr netip.AddrPort) (*net.TCPListener, error) {
	var ln *net.TCPListener
	err := h.Run(func() error {
		var err error
		ln, err = net.ListenTCP("tcp", net.TCPAddrFromAddrPort(addr))
		return err
	})
	return ln, err
}

// DialTCP connects from inside host h, bounded by timeout.
func (h *Host) DialTCP(addr netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := h.Run(func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr.String(), timeout)
		return err
	})
	return c, err
}

// ErrNoPacket: nothing arrived within the probe's wait.
var ErrNoPacket = errors.New("natlab: no packet arrived")

// Probe sends one datagram from c to dst and waits up to wait for any
// datagram on rc (which may be c); it returns the payload and the source
// address seen. It is the building block of the classification tests.
func Probe(c *net.UDPConn, dst netip.AddrPort, payload string, rc *net.UDPConn, wait time.Duration) (string, netip.AddrPort, error) {
	if _, err := c.WriteToUDPAddrPort([]byte(payload), dst); err != nil {
		return "", netip.AddrPort{}, err
	}
	return Receive(rc, wait)
}

// Receive waits up to wait for one datagram on c.
func Receive(c *net.UDPConn, wait time.Duration) (string, netip.AddrPort, error) {
	buf := make([]byte, 2048)
	c.SetReadDeadline(time.Now().Add(wait))
	defer c.SetReadDeadline(time.Time{})
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return "", netip.AddrPort{}, ErrNoPacket
		}
		return "", netip.AddrPort{}, err
	}
	return string(buf[:n]), netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), nil
}

// Mapping is RFC 4787's mapping behaviour, as observed.
type Mapping string

// Filtering is RFC 4787's filtering behaviour, as observed.
type Filtering string

// Observed behaviours.
const (
	EIM  Mapping   = "endpoint-independent"
	ADM  Mapping   = "address-dependent"
	APDM Mapping   = "address-and-port-dependent"
	EIF  Filtering = "endpoint-independent"
	ADF  Filtering = "address-dependent"
	APDF Filtering = "address-and-port-dependent"
	// NoUDP: no UDP gets out at all.
	NoUDP Mapping = "no UDP"
)

// Classification is what a classification run observed for one NAT.
type Classification struct {
	Mapping   Mapping
	Filtering Filtering
	// External addresses seen by the two public hosts for one LAN socket.
	SeenByA, SeenByB netip.AddrPort
}

func (c Classification) String() string {
	if c.Mapping == NoUDP {
		return "no UDP out"
	}
	return fmt.Sprintf("mapping %-26s filtering %-26s (A saw %s, B saw %s)", c.Mapping, c.Filtering, c.SeenByA, c.SeenByB)
}

// Classify measures the NAT in front of inside, RFC 4787 style: inside
// sends from one socket to public hosts a (two ports) and b; the external
// addresses they see give the mapping; which unsolicited packets then get
// back in (from a's other port, from b2 that inside never contacted) gives
// the filtering. a, b and b2 must be distinct public hosts.
func Classify(inside, a, b, b2 *Host) (Classification, error) {
	var res Classification
	// Packets that should arrive get a generous wait (a loaded machine can
	// stall a namespace for a while; the wait ends as soon as they do);
	// packets that should be filtered get a short one.
	const wait = 3 * time.Second
	const filteredWait = 700 * time.Millisecond
	in, err := inside.ListenUDP(netip.AddrPortFrom(netip.IPv4Unspecified(), 0))
	if err != nil {
		return res, err
	}
	defer in.Close()
	socks := map[string]*net.UDPConn{}
	open := func(name string, h *Host, port uint16) (*net.UDPConn, error) {
		c, err := h.ListenUDP(netip.AddrPortFrom(h.Addr(), port))
		if err == nil {
			socks[name] = c
		}
		return c, err
	}
	defer func() {
		for _, c := range socks {
			c.Close()
		}
	}()
	a1, err := open("a1", a, 3478)
	if err != nil {
		return res, err
	}
	a2, err := open("a2", a, 3479)
	if err != nil {
		return res, err
	}
	b1, err := open("b1", b, 3478)
	if err != nil {
		return res, err
	}
	c1, err := open("c1", b2, 3478)
	if err != nil {
		return res, err
	}
	// Mapping: what do a and b see?
	if _, res.SeenByA, err = Probe(in, netip.AddrPortFrom(a.Addr(), 3478), "to-a", a1, wait); err != nil {
		if errors.Is(err, ErrNoPacket) {
			res.Mapping = NoUDP
			return res, nil
		}
		return res, err
	}
	if _, res.SeenByB, err = Probe(in, netip.AddrPortFrom(b.Addr(), 3478), "to-b", b1, wait); err != nil {
		return res, fmt.Errorf("b: %w", err)
	}
	switch {
	case res.SeenByA == res.SeenByB:
		res.Mapping = EIM
	default:
		// Tell address-dependent from address-and-port-dependent: send to
		// a's second port; the same external port as for a's first means
		// address-dependent.
		_, seen, err := Probe(in, netip.AddrPortFrom(a.Addr(), 3479), "to-a2", a2, wait)
		if err != nil {
			return res, fmt.Errorf("a2: %w", err)
		}
		if seen == res.SeenByA {
			res.Mapping = ADM
		} else {
			res.Mapping = APDM
		}
	}
	// The reply from the exact address must always get in.
	if msg, _, err := Probe(a1, res.SeenByA, "reply", in, wait); err != nil || msg != "reply" {
		return res, fmt.Errorf("the reply to a packet sent did not get in: %v", err)
	}
	// Filtering. From b2 (never contacted) first, then from a's other port.
	if _, _, err := Probe(c1, res.SeenByA, "from-stranger", in, filteredWait); err == nil {
		res.Filtering = EIF
		return res, nil
	} else if !errors.Is(err, ErrNoPacket) {
		return res, err
	}
	a3, err := open("a3", a, 3480) // a port of a's that inside never sent to
	if err != nil {
		return res, err
	}
	if _, _, err := Probe(a3, res.SeenByA, "from-other-port", in, filteredWait); err == nil {
		res.Filtering = ADF
	} else if errors.Is(err, ErrNoPacket) {
		res.Filtering = APDF
	} else {
		return res, err
	}
	return res, nil
}
