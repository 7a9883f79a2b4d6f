package upnp

// NAT-PMP (RFC 6886) and PCP (RFC 6887). Both run over UDP to port 5351
// of the gateway, and a PCP server answers NAT-PMP requests too (version
// 0). They are a few fixed-size messages each, written here rather than
// taken from a library: jackpal/go-nat-pmp opens its sockets itself (no
// way to place them in a namespace) and takes no context, and no
// maintained Go PCP client exists.

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

const (
	pmpPort = 5351

	pmpVersion = 0
	pcpVersion = 2

	pmpOpAddr = 0
	pmpOpUDP  = 1
	pmpOpTCP  = 2

	pcpOpAnnounce = 0
	pcpOpMap      = 1

	pcpUnsuppVersion  = 1
	pcpNoResources    = 8
	pmpNetworkFailure = 3
	pmpNoResources    = 4
	protoUDP          = 17
	protoTCP          = 6
)

// pmpOp is the NAT-PMP opcode that maps a port of t.
func pmpOp(t Transport) byte {
	if t == TCP {
		return pmpOpTCP
	}
	return pmpOpUDP
}

// pcpProto is the IANA protocol number PCP's MAP names for t.
func pcpProto(t Transport) byte {
	if t == TCP {
		return protoTCP
	}
	return protoUDP
}

var errShort = errors.New("upnp: short or malformed response")

// pcpResults names PCP result codes (RFC 6887 section 7.4).
var pcpResults = map[int]string{
	1: "UNSUPP_VERSION", 2: "NOT_AUTHORIZED", 3: "MALFORMED_REQUEST", 4: "UNSUPP_OPCODE",
	5: "UNSUPP_OPTION", 6: "MALFORMED_OPTION", 7: "NETWORK_FAILURE", 8: "NO_RESOURCES",
	9: "UNSUPP_PROTOCOL", 10: "USER_EX_QUOTA", 11: "CANNOT_PROVIDE_EXTERNAL", 12: "ADDRESS_MISMATCH",
	13: "EXCESSIVE_REMOTE_PEERS",
}

// pmpResults names NAT-PMP result codes (RFC 6886 section 3.5).
var pmpResults = map[int]string{
	1: "unsupported version", 2: "not authorized/refused", 3: "network failure", 4: "out of resources",
	5: "unsupported opcode",
}

// exchange sends req from a fresh socket on local to gw:5351 until a
// response that match accepts arrives (RFC 6886 timing: 250ms, doubling),
// or ctx ends.
func (m *Mapper) exchange(ctx context.Context, local, gw netip.Addr, req []byte, match func([]byte) bool) ([]byte, error) {
	conn, err := m.listenUDP(local)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Now()) })
	defer stop()
	to := net.UDPAddrFromAddrPort(netip.AddrPortFrom(gw, pmpPort))
	buf := make([]byte, 1100)
	rto := 250 * time.Millisecond
	for {
		if _, err := conn.WriteTo(req, to); err != nil {
			return nil, err
		}
		deadline := time.Now().Add(rto)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		conn.SetReadDeadline(deadline)
		for {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break
				}
				return nil, err
			}
			ua, _ := from.(*net.UDPAddr)
			if ua == nil || ua.AddrPort().Addr().Unmap() != gw || ua.Port != pmpPort {
				continue
			}
			if match(buf[:n]) {
				return append([]byte(nil), buf[:n]...), nil
			}
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		rto = min(rto*2, 4*time.Second)
	}
}

// probeGateways runs probe against every gateway at once and returns the
// first client, or every error.
func (m *Mapper) probeGateways(ctx context.Context, probe func(ctx context.Context, local, gw netip.Addr) (client, error)) (client, error) {
	gws := m.gateways()
	if len(gws) == 0 {
		return nil, errors.New("no gateway address")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type res struct {
		c   client
		err error
	}
	out := make(chan res, len(gws))
	var wg sync.WaitGroup
	for _, gw := range gws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local, err := m.localFor(gw)
			if err != nil {
				out <- res{err: err}
				return
			}
			c, err := probe(ctx, local, gw)
			if err != nil {
				err = fmt.Errorf("%s: %w", gw, err)
			}
			out <- res{c, err}
		}()
	}
	defer func() { cancel(); wg.Wait() }() // stop the other probes
	var errs []error
	for range gws {
		r := <-out
		if r.err == nil {
			return r.c, nil
		}
		errs = append(errs, r.err)
	}
	return nil, errors.Join(errs...)
}

// --- NAT-PMP ---

type pmpClient struct {
	m         *Mapper
	local, gw netip.Addr
}

func (c *pmpClient) proto() Protocol     { return NATPMP }
func (c *pmpClient) gateway() netip.Addr { return c.gw }

// pmpCheck validates a NAT-PMP response to opcode op.
func pmpCheck(b []byte, op byte, size int) error {
	if len(b) < 4 || b[0] != pmpVersion || b[1] != 128+op {
		return errShort
	}
	if code := int(binary.BigEndian.Uint16(b[2:])); code != 0 {
		return &GatewayError{Protocol: NATPMP, Code: code, Msg: pmpResults[code]}
	}
	if len(b) < size {
		return errShort
	}
	return nil
}

func (m *Mapper) probeNATPMP(ctx context.Context) (client, error) {
	return m.probeGateways(ctx, func(ctx context.Context, local, gw netip.Addr) (client, error) {
		c := &pmpClient{m: m, local: local, gw: gw}
		_, err := c.externalAddr(ctx)
		var ge *GatewayError
		if err != nil && !errors.As(err, &ge) {
			return nil, err
		}
		// An error code is an answer too: mapPort reports it.
		return c, nil
	})
}

func (c *pmpClient) externalAddr(ctx context.Context) (netip.Addr, error) {
	resp, err := c.m.exchange(ctx, c.local, c.gw, []byte{pmpVersion, pmpOpAddr}, func(b []byte) bool {
		return len(b) >= 2 && b[1] == 128+pmpOpAddr
	})
	if err != nil {
		return netip.Addr{}, err
	}
	if err := pmpCheck(resp, pmpOpAddr, 12); err != nil {
		var ge *GatewayError
		if errors.As(err, &ge) && ge.Code == pmpNetworkFailure {
			// RFC 6886: the gateway has no external address itself.
			return netip.Addr{}, fmt.Errorf("%w: nat-pmp gateway %s has no external address (%w)", ErrPrivateExternal, c.gw, err)
		}
		return netip.Addr{}, err
	}
	return netip.AddrFrom4([4]byte(resp[8:12])), nil
}

func (c *pmpClient) request(ctx context.Context, port, want uint16, lifetime uint32) (ext uint16, life uint32, err error) {
	op := pmpOp(c.m.cfg.Transport)
	req := make([]byte, 12)
	req[0], req[1] = pmpVersion, op
	binary.BigEndian.PutUint16(req[4:], port)
	binary.BigEndian.PutUint16(req[6:], want)
	binary.BigEndian.PutUint32(req[8:], lifetime)
	resp, err := c.m.exchange(ctx, c.local, c.gw, req, func(b []byte) bool {
		return len(b) >= 2 && b[1] == 128+op && (len(b) < 10 || binary.BigEndian.Uint16(b[8:]) == port)
	})
	if err != nil {
		return 0, 0, err
	}
	if err := pmpCheck(resp, op, 16); err != nil {
		return 0, 0, err
	}
	return binary.BigEndian.Uint16(resp[10:]), binary.BigEndian.Uint32(resp[12:]), nil
}

func (c *pmpClient) mapPort(ctx context.Context, port, want uint16, lease time.Duration) (grant, error) {
	ip, err := c.externalAddr(ctx)
	if err != nil {
		return grant{}, err
	}
	g := grant{internal: netip.AddrPortFrom(c.local, port)}
	if !IsPublic(ip) {
		// Don't take a port that cannot help; report the address.
		g.ext = netip.AddrPortFrom(ip, 0)
		return g, nil
	}
	ext, life, err := c.request(ctx, port, want, uint32(lease/time.Second))
	if err != nil {
		return grant{}, err
	}
	g.ext, g.lease = netip.AddrPortFrom(ip, ext), time.Duration(life)*time.Second
	return g, nil
}

func (c *pmpClient) unmap(ctx context.Context, g grant) error {
	if g.ext.Port() == 0 {
		return nil
	}
	_, _, err := c.request(ctx, g.internal.Port(), 0, 0)
	return err
}

// --- PCP ---

type pcpClient struct {
	m         *Mapper
	local, gw netip.Addr
	nonce     [12]byte // one per client: renewals and the delete reuse it
}

func (c *pcpClient) proto() Protocol     { return PCP }
func (c *pcpClient) gateway() netip.Addr { return c.gw }

// pcpHeader builds a PCP request header (24 bytes) with room for a body
// of body bytes. The client address is IPv4-mapped for IPv4.
func pcpHeader(op byte, lifetime uint32, client netip.Addr, body int) []byte {
	b := make([]byte, 24+body)
	b[0], b[1] = pcpVersion, op
	binary.BigEndian.PutUint32(b[4:], lifetime)
	a := client.As16()
	copy(b[8:], a[:])
	return b
}

// pcpCheck validates a PCP response to op and returns its granted
// lifetime.
func pcpCheck(b []byte, op byte, size int) (uint32, error) {
	if len(b) < 24 || b[0] != pcpVersion || b[1] != 128+op {
		return 0, errShort
	}
	if code := int(b[3]); code != 0 {
		// An error's lifetime is how long the error will last.
		after := time.Duration(binary.BigEndian.Uint32(b[4:])) * time.Second
		return 0, &GatewayError{Protocol: PCP, Code: code, Msg: pcpResults[code], RetryAfter: after}
	}
	if len(b) < size {
		return 0, errShort
	}
	return binary.BigEndian.Uint32(b[4:]), nil
}

func (m *Mapper) probePCP(ctx context.Context) (client, error) {
	return m.probeGateways(ctx, func(ctx context.Context, local, gw netip.Addr) (client, error) {
		req := pcpHeader(pcpOpAnnounce, 0, local, 0)
		resp, err := m.exchange(ctx, local, gw, req, func(b []byte) bool {
			// A NAT-PMP-only server answers version 0, UNSUPP_VERSION.
			return len(b) >= 4 && (b[0] == pcpVersion && b[1] == 128+pcpOpAnnounce || b[0] == pmpVersion)
		})
		if err != nil {
			return nil, err
		}
		if resp[0] != pcpVersion {
			return nil, &GatewayError{Protocol: PCP, Code: pcpUnsuppVersion, Msg: "gateway speaks NAT-PMP only"}
		}
		if _, err := pcpCheck(resp, pcpOpAnnounce, 24); err != nil {
			var ge *GatewayError
			if !errors.As(err, &ge) || ge.Code == pcpUnsuppVersion {
				return nil, err
			}
			// Any other result code is an answer: mapPort reports it.
		}
		c := &pcpClient{m: m, local: local, gw: gw}
		rand.Read(c.nonce[:])
		return c, nil
	})
}

func (c *pcpClient) request(ctx context.Context, port, want uint16, lifetime uint32) (grant, error) {
	req := pcpHeader(pcpOpMap, lifetime, c.local, 36)
	body := req[24:]
	copy(body, c.nonce[:])
	body[12] = pcpProto(c.m.cfg.Transport)
	binary.BigEndian.PutUint16(body[16:], port)
	binary.BigEndian.PutUint16(body[18:], want)
	copy(body[20:], []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff}) // any IPv4 address
	resp, err := c.m.exchange(ctx, c.local, c.gw, req, func(b []byte) bool {
		return len(b) >= 36 && b[0] == pcpVersion && b[1] == 128+pcpOpMap && [12]byte(b[24:36]) == c.nonce
	})
	if err != nil {
		return grant{}, err
	}
	life, err := pcpCheck(resp, pcpOpMap, 60)
	if err != nil {
		return grant{}, err
	}
	rb := resp[24:]
	ext := netip.AddrFrom16([16]byte(rb[20:36])).Unmap()
	return grant{
		internal: netip.AddrPortFrom(c.local, port),
		ext:      netip.AddrPortFrom(ext, binary.BigEndian.Uint16(rb[18:])),
		lease:    time.Duration(life) * time.Second,
		nonce:    c.nonce,
	}, nil
}

func (c *pcpClient) mapPort(ctx context.Context, port, want uint16, lease time.Duration) (grant, error) {
	g, err := c.request(ctx, port, want, uint32(lease/time.Second))
	if ge := (*GatewayError)(nil); errors.As(err, &ge) {
		if perr := c.privateExternal(ctx); perr != nil {
			return grant{}, fmt.Errorf("%w; %w", perr, err)
		}
	}
	return g, err
}

// privateExternal returns an ErrPrivateExternal if the gateway's own WAN
// address is not public, asked over NAT-PMP, or nil. A refused MAP does
// not say why, and a gateway behind another NAT may refuse every one:
// miniupnpd answers NO_RESOURCES then. PCP has no request for the external
// address, but a PCP server may answer NAT-PMP too (RFC 6887 appendix A;
// miniupnpd does); one that does not is waited for no longer than a
// discovery.
func (c *pcpClient) privateExternal(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.m.cfg.DiscoverTimeout)
	defer cancel()
	ip, err := (&pmpClient{m: c.m, local: c.local, gw: c.gw}).externalAddr(ctx)
	switch {
	case errors.Is(err, ErrPrivateExternal):
		return err
	case err == nil && !IsPublic(ip):
		return fmt.Errorf("%w: gateway %s reports %s over nat-pmp", ErrPrivateExternal, c.gw, ip)
	}
	return nil
}

func (c *pcpClient) unmap(ctx context.Context, g grant) error {
	_, err := c.request(ctx, g.internal.Port(), 0, 0)
	return err
}
