package upnp

// UPnP IGD: SSDP discovery (written here, on a socket from
// Config.ListenPacket), the device description (fetched here with an
// http.Client whose connections come from Config.DialContext), and the
// SOAP actions of goupnp's generated WANIPConnection1/2 and
// WANPPPConnection1 clients, pointed at that same http.Client.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/huin/goupnp"
	"github.com/huin/goupnp/dcps/internetgateway2"
	"github.com/huin/goupnp/soap"
)

// UPnP error codes the Mapper acts on.
const (
	igdInvalidArgs         = 402
	igdNoSuchEntry         = 714
	igdConflict            = 718
	igdOnlyPermanentLeases = 725
)

var ssdpAddr = netip.MustParseAddrPort("239.255.255.250:1900")

// ssdpTargets are the search targets sent: IGD v1 and v2 devices, and the
// WANIPConnection service for devices that only answer service searches.
var ssdpTargets = []string{
	"urn:schemas-upnp-org:device:InternetGatewayDevice:1",
	"urn:schemas-upnp-org:device:InternetGatewayDevice:2",
	internetgateway2.URN_WANIPConnection_1,
}

// igdConn is what the three generated service clients have in common.
type igdConn interface {
	AddPortMappingCtx(ctx context.Context, remoteHost string, extPort uint16, proto string, intPort uint16, intClient string, enabled bool, desc string, lease uint32) error
	DeletePortMappingCtx(ctx context.Context, remoteHost string, extPort uint16, proto string) error
	GetExternalIPAddressCtx(ctx context.Context) (string, error)
}

// igdAnyConn is WANIPConnection2's AddAnyPortMapping: the gateway picks a
// free port itself.
type igdAnyConn interface {
	AddAnyPortMappingCtx(ctx context.Context, remoteHost string, extPort uint16, proto string, intPort uint16, intClient string, enabled bool, desc string, lease uint32) (uint16, error)
}

type igdClient struct {
	m         *Mapper
	conn      igdConn
	service   string
	loc       *url.URL
	local, gw netip.Addr
}

func (c *igdClient) proto() Protocol { return UPnP }

// protoName is the transport as IGD's port mapping actions name it.
func (c *igdClient) protoName() string {
	if c.m.cfg.Transport == TCP {
		return "TCP"
	}
	return "UDP"
}
func (c *igdClient) gateway() netip.Addr { return c.gw }

func (m *Mapper) httpClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			DialContext: m.cfg.DialContext,
			// No idle connections: nothing outlives a request.
			DisableKeepAlives:     true,
			ResponseHeaderTimeout: 3 * time.Second,
		},
		Timeout: 5 * time.Second,
	}
}

// probeIGD searches for IGDs with SSDP, and returns a client for the
// first device whose WAN connection service answers GetExternalIPAddress.
func (m *Mapper) probeIGD(ctx context.Context) (client, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	locs, err := m.ssdpSearch(ctx)
	if err != nil {
		return nil, err
	}
	all := locs
	defer func() {
		// The search goroutine ends once ctx is cancelled: wait for it.
		cancel()
		for range all {
		}
	}()
	type res struct {
		c   client
		err error
	}
	out := make(chan res)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel() // before the wait: stop the other probes
	pending := 0
	var errs []error
	for {
		select {
		case loc, ok := <-locs:
			if !ok {
				locs = nil
				if pending == 0 {
					return nil, m.noIGD(errs)
				}
				continue
			}
			pending++
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := m.openIGD(ctx, loc)
				select {
				case out <- res{c, err}:
				case <-ctx.Done():
				}
			}()
		case r := <-out:
			pending--
			if r.err == nil {
				return r.c, nil
			}
			errs = append(errs, r.err)
			if pending == 0 && locs == nil {
				return nil, m.noIGD(errs)
			}
		case <-ctx.Done():
			return nil, m.noIGD(append(errs, ctx.Err()))
		}
	}
}

func (m *Mapper) noIGD(errs []error) error {
	if len(errs) == 0 {
		return errors.New("no IGD answered SSDP")
	}
	return errors.Join(errs...)
}

// ssdpSearch sends M-SEARCH requests (three times, 250ms apart) and
// yields each new location that answers until ctx ends.
func (m *Mapper) ssdpSearch(ctx context.Context) (<-chan *url.URL, error) {
	conn, err := m.cfg.ListenPacket("udp4", "0.0.0.0:0")
	if err != nil {
		return nil, err
	}
	var reqs [][]byte
	for _, st := range ssdpTargets {
		reqs = append(reqs, []byte("M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n"+
			"MAN: \"ssdp:discover\"\r\nMX: 1\r\nST: "+st+"\r\n\r\n"))
	}
	to := net.UDPAddrFromAddrPort(ssdpAddr)
	send := func() {
		for _, r := range reqs {
			conn.WriteTo(r, to)
		}
	}
	send()
	locs := make(chan *url.URL)
	go func() {
		defer close(locs)
		defer conn.Close()
		stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Now()) })
		defer stop()
		sends := 1
		next := time.Now().Add(250 * time.Millisecond)
		seen := map[string]bool{}
		buf := make([]byte, 2048)
		for {
			conn.SetReadDeadline(next)
			n, _, err := conn.ReadFrom(buf)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				var ne net.Error
				if !errors.As(err, &ne) || !ne.Timeout() {
					return
				}
				if sends < 3 {
					send()
					sends++
				}
				next = time.Now().Add(250 * time.Millisecond)
				continue
			}
			resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(buf[:n])), nil)
			if err != nil {
				continue
			}
			resp.Body.Close()
			loc, err := url.Parse(resp.Header.Get("Location"))
			if err != nil || loc.Host == "" || seen[loc.String()] {
				continue
			}
			seen[loc.String()] = true
			m.log.Debug("upnp: SSDP answer", "location", loc, "st", resp.Header.Get("ST"))
			select {
			case locs <- loc:
			case <-ctx.Done():
				return
			}
		}
	}()
	return locs, nil
}

// openIGD fetches the device description at loc and returns a client for
// its first WAN connection service that answers.
func (m *Mapper) openIGD(ctx context.Context, loc *url.URL) (client, error) {
	gw, err := netip.ParseAddr(loc.Hostname())
	if err != nil {
		return nil, fmt.Errorf("%s: gateway is not an IP address", loc)
	}
	gw = gw.Unmap()
	local, err := m.localFor(gw)
	if err != nil {
		return nil, err
	}
	hc := m.httpClient()
	root, err := fetchRoot(ctx, hc, loc)
	if err != nil {
		return nil, err
	}
	var conns []igdConn
	var names []string
	if cs, err := internetgateway2.NewWANIPConnection2ClientsFromRootDevice(root, loc); err == nil {
		for _, c := range cs {
			c.SOAPClient.HTTPClient = *hc
			conns, names = append(conns, c), append(names, "WANIPConnection:2")
		}
	}
	if cs, err := internetgateway2.NewWANIPConnection1ClientsFromRootDevice(root, loc); err == nil {
		for _, c := range cs {
			c.SOAPClient.HTTPClient = *hc
			conns, names = append(conns, c), append(names, "WANIPConnection:1")
		}
	}
	if cs, err := internetgateway2.NewWANPPPConnection1ClientsFromRootDevice(root, loc); err == nil {
		for _, c := range cs {
			c.SOAPClient.HTTPClient = *hc
			conns, names = append(conns, c), append(names, "WANPPPConnection:1")
		}
	}
	if len(conns) == 0 {
		return nil, fmt.Errorf("%s: no WAN connection service", loc)
	}
	var errs []error
	for i, c := range conns {
		if _, err := c.GetExternalIPAddressCtx(ctx); err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", loc, names[i], err))
			continue
		}
		return &igdClient{m: m, conn: c, service: names[i], loc: loc, local: local, gw: gw}, nil
	}
	return nil, errors.Join(errs...)
}

func fetchRoot(ctx context.Context, hc *http.Client, loc *url.URL) (*goupnp.RootDevice, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, loc.String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", loc, resp.Status)
	}
	root := new(goupnp.RootDevice)
	dec := xml.NewDecoder(resp.Body)
	dec.DefaultSpace = goupnp.DeviceXMLNamespace
	if err := dec.Decode(root); err != nil {
		return nil, fmt.Errorf("%s: device description: %w", loc, err)
	}
	base := loc
	if root.URLBaseStr != "" {
		if b, err := url.Parse(root.URLBaseStr); err == nil {
			base = b
		}
	}
	root.SetURLBase(base)
	return root, nil
}

// igdCode returns the UPnP error code of a SOAP fault, or 0.
func igdCode(err error) int {
	var f *soap.SOAPFaultError
	if errors.As(err, &f) {
		return f.Detail.UPnPError.Errorcode
	}
	return 0
}

func igdError(err error) error {
	var f *soap.SOAPFaultError
	if errors.As(err, &f) {
		return &GatewayError{Protocol: UPnP, Code: f.Detail.UPnPError.Errorcode, Msg: strings.TrimSpace(f.Detail.UPnPError.ErrorDescription)}
	}
	return err
}

func (c *igdClient) externalAddr(ctx context.Context) (netip.Addr, error) {
	s, err := c.conn.GetExternalIPAddressCtx(ctx)
	if err != nil {
		return netip.Addr{}, igdError(err)
	}
	s = strings.TrimSpace(s)
	if s == "" || s == "0.0.0.0" {
		// miniupnpd, for one, says this when its WAN address is private.
		return netip.Addr{}, fmt.Errorf("%w: upnp gateway %s reports no external address", ErrPrivateExternal, c.gw)
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("upnp: gateway's external address %q: %w", s, err)
	}
	return a.Unmap(), nil
}

// mapPort asks for want, then handles what gateways answer: 725 and 402
// (leases not supported) → a permanent mapping; 718 (the port is taken) →
// AddAnyPortMapping where the service has it, else random ports.
func (c *igdClient) mapPort(ctx context.Context, port, want uint16, lease time.Duration) (grant, error) {
	ip, err := c.externalAddr(ctx)
	if err != nil {
		return grant{}, err
	}
	g := grant{internal: netip.AddrPortFrom(c.local, port)}
	if !IsPublic(ip) {
		g.ext = netip.AddrPortFrom(ip, 0)
		return g, nil
	}
	secs := uint32(lease / time.Second)
	add := func(ext uint16) error {
		err := c.conn.AddPortMappingCtx(ctx, "", ext, c.protoName(), port, c.local.String(), true, c.m.cfg.Description, secs)
		if code := igdCode(err); secs != 0 && (code == igdOnlyPermanentLeases || code == igdInvalidArgs) {
			c.m.log.Debug("upnp: gateway wants a permanent lease", "code", code)
			secs = 0
			err = c.conn.AddPortMappingCtx(ctx, "", ext, c.protoName(), port, c.local.String(), true, c.m.cfg.Description, secs)
		}
		return err
	}
	ext := want
	err = add(ext)
	for try := 0; igdCode(err) == igdConflict && try < 4; try++ {
		if anyc, ok := c.conn.(igdAnyConn); ok && try == 0 {
			var got uint16
			if got, err = anyc.AddAnyPortMappingCtx(ctx, "", ext, c.protoName(), port, c.local.String(), true, c.m.cfg.Description, secs); err == nil {
				ext = got
				break
			}
			continue
		}
		ext = uint16(1024 + rand.IntN(65535-1024))
		c.m.log.Debug("upnp: port taken, trying another", "port", ext)
		err = add(ext)
	}
	if err != nil {
		return grant{}, igdError(err)
	}
	g.ext = netip.AddrPortFrom(ip, ext)
	g.lease, g.permanent = time.Duration(secs)*time.Second, secs == 0
	return g, nil
}

func (c *igdClient) unmap(ctx context.Context, g grant) error {
	if g.ext.Port() == 0 {
		return nil
	}
	if err := c.conn.DeletePortMappingCtx(ctx, "", g.ext.Port(), c.protoName()); err != nil && igdCode(err) != igdNoSuchEntry {
		return igdError(err)
	}
	return nil
}
