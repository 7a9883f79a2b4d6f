package upnp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/huin/goupnp/dcps/internetgateway2"
)

// Fuzz targets for what the Mapper parses from the local network: NAT-PMP
// and PCP answers, SSDP answers, device descriptions and SOAP answers
// (docs/security.md, "Fuzzing"). No socket is opened: the Config hooks
// and the HTTP client get fakes that answer with the fuzzer's bytes.

var (
	fuzzGW    = netip.MustParseAddr("192.168.1.1")
	fuzzLocal = netip.MustParseAddr("192.168.1.10")
	errFake   = errors.New("fake socket: no more answers")
)

// fakePacketConn answers every read with its datagrams, in turn, from
// from, then fails every read with errFake.
type fakePacketConn struct {
	from  net.Addr
	dgram [][]byte
}

func (c *fakePacketConn) ReadFrom(b []byte) (int, net.Addr, error) {
	if len(c.dgram) == 0 {
		return 0, nil, errFake
	}
	n := copy(b, c.dgram[0])
	c.dgram = c.dgram[1:]
	return n, c.from, nil
}
func (c *fakePacketConn) WriteTo(b []byte, _ net.Addr) (int, error) { return len(b), nil }
func (c *fakePacketConn) Close() error                              { return nil }
func (c *fakePacketConn) LocalAddr() net.Addr                       { return &net.UDPAddr{IP: fuzzLocal.AsSlice()} }
func (c *fakePacketConn) SetDeadline(time.Time) error               { return nil }
func (c *fakePacketConn) SetReadDeadline(time.Time) error           { return nil }
func (c *fakePacketConn) SetWriteDeadline(time.Time) error          { return nil }

// fuzzMapper is a Mapper whose UDP sockets are fakes answering dgrams.
func fuzzMapper(from netip.AddrPort, dgrams ...[]byte) *Mapper {
	cfg := Config{
		Port: 4900,
		ListenPacket: func(network, addr string) (net.PacketConn, error) {
			return &fakePacketConn{from: net.UDPAddrFromAddrPort(from), dgram: dgrams}, nil
		},
		DialContext: func(context.Context, string, string) (net.Conn, error) { return nil, errFake },
	}
	cfg.fill()
	return &Mapper{cfg: cfg, log: cfg.Logger}
}

// namedMapError reports whether err is one a mapping attempt may return
// for a bad answer: the socket's (no matching answer), a short answer, or
// the gateway's refusal.
func namedMapError(err error) bool {
	var ge *GatewayError
	return errors.Is(err, errFake) || errors.Is(err, errShort) || errors.Is(err, ErrPrivateExternal) || errors.As(err, &ge) && ge.Error() != ""
}

// FuzzNATPMP answers a NAT-PMP client's external address and mapping
// requests with a datagram. Properties: errors are named; an external
// address is the answer's bytes 8..11 and needs a 12-byte success
// answer; a mapping needs a 16-byte success answer for the port asked.
func FuzzNATPMP(f *testing.F) {
	addr := []byte{pmpVersion, 128 + pmpOpAddr, 0, 0, 0, 0, 0, 1, 203, 0, 113, 5}
	mapping := []byte{pmpVersion, 128 + pmpOpUDP, 0, 0, 0, 0, 0, 1, 0x13, 0x24, 0x13, 0x24, 0, 0, 0x1c, 0x20}
	f.Add(addr)
	f.Add(mapping)
	f.Add([]byte{pmpVersion, 128 + pmpOpAddr, 0, pmpNetworkFailure})
	f.Add([]byte{pmpVersion, 128 + pmpOpUDP, 0, pmpNoResources})
	f.Add([]byte{pmpVersion, 128 + pmpOpUDP, 0, 0, 0, 0})
	f.Add([]byte{pmpVersion, 128 + pmpOpAddr, 0xff, 0xff})
	f.Add([]byte{pmpVersion})
	f.Fuzz(func(t *testing.T, resp []byte) {
		ctx := context.Background()
		m := fuzzMapper(netip.AddrPortFrom(fuzzGW, pmpPort), resp)
		c := &pmpClient{m: m, local: fuzzLocal, gw: fuzzGW}
		ip, err := c.externalAddr(ctx)
		if err != nil {
			if !namedMapError(err) {
				t.Fatalf("externalAddr: error %v is not a named one", err)
			}
		} else if len(resp) < 12 || resp[0] != pmpVersion || resp[1] != 128+pmpOpAddr || resp[2] != 0 || resp[3] != 0 || ip != netip.AddrFrom4([4]byte(resp[8:12])) {
			t.Fatalf("externalAddr accepted %x as %v", resp, ip)
		}
		m = fuzzMapper(netip.AddrPortFrom(fuzzGW, pmpPort), resp)
		c = &pmpClient{m: m, local: fuzzLocal, gw: fuzzGW}
		ext, life, err := c.request(ctx, 4900, 4900, 7200)
		if err != nil {
			if !namedMapError(err) {
				t.Fatalf("request: error %v is not a named one", err)
			}
			return
		}
		if len(resp) < 16 || binary.BigEndian.Uint16(resp[8:]) != 4900 || ext != binary.BigEndian.Uint16(resp[10:]) || life != binary.BigEndian.Uint32(resp[12:]) {
			t.Fatalf("request accepted %x as port %d for %d s", resp, ext, life)
		}
	})
}

// FuzzPCP answers a PCP client's MAP request with a datagram; the fuzzer
// may keep the request's nonce (fixNonce) to get past the match.
// Properties: errors are named; a grant needs a 60-byte success answer
// and has the answer's port and an address that is not IPv4-mapped.
func FuzzPCP(f *testing.F) {
	nonce := [12]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	ok := make([]byte, 60)
	ok[0], ok[1] = pcpVersion, 128+pcpOpMap
	binary.BigEndian.PutUint32(ok[4:], 7200)
	copy(ok[24:], nonce[:])
	ok[36] = protoUDP
	binary.BigEndian.PutUint16(ok[40:], 4900)
	binary.BigEndian.PutUint16(ok[42:], 4901)
	copy(ok[44:], netip.MustParseAddr("::ffff:203.0.113.5").AsSlice())
	f.Add(ok, false)
	refused := bytes.Clone(ok)
	refused[3] = pcpNoResources
	f.Add(refused, false)
	f.Add(ok[:40], true)
	f.Add([]byte{pmpVersion, 128, 0, 1}, true)
	f.Fuzz(func(t *testing.T, resp []byte, fixNonce bool) {
		if fixNonce && len(resp) >= 36 {
			copy(resp[24:36], nonce[:])
		}
		m := fuzzMapper(netip.AddrPortFrom(fuzzGW, pmpPort), resp)
		c := &pcpClient{m: m, local: fuzzLocal, gw: fuzzGW, nonce: nonce}
		g, err := c.request(context.Background(), 4900, 4900, 7200)
		if err != nil {
			if !namedMapError(err) {
				t.Fatalf("request: error %v is not a named one", err)
			}
			var ge *GatewayError
			if errors.As(err, &ge) && (len(resp) < 24 || ge.Code != int(resp[3])) {
				t.Fatalf("gateway error %v from %x", ge, resp)
			}
			return
		}
		if len(resp) < 60 || resp[3] != 0 || g.ext.Port() != binary.BigEndian.Uint16(resp[42:]) || g.ext.Addr().Is4In6() || g.nonce != nonce {
			t.Fatalf("request accepted %x as %+v", resp, g)
		}
	})
}

// FuzzSSDP answers an SSDP search with a datagram. Properties: the search
// yields at most one location, with a host, and ends when its socket
// fails.
func FuzzSSDP(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nUSN: uuid:1::upnp:rootdevice\r\nLOCATION: http://192.168.1.1:5000/rootDesc.xml\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nLOCATION: /relative\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nLocation: http://[::1%25eth0]:1/x\r\nContent-Length: 5\r\n\r\nab"))
	f.Add([]byte("NOTIFY * HTTP/1.1\r\n\r\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, pkt []byte) {
		m := fuzzMapper(netip.AddrPortFrom(fuzzGW, 1900), pkt)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		locs, err := m.ssdpSearch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for loc := range locs {
			n++
			if loc.Host == "" || n > 1 {
				t.Fatalf("location %d: %v", n, loc)
			}
		}
	})
}

// fakeTransport serves a device description to GETs and a SOAP answer
// with status to POSTs.
type fakeTransport struct {
	desc, soap []byte
	status     int
}

func (ft *fakeTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		io.Copy(io.Discard, req.Body)
		req.Body.Close()
	}
	body, status := ft.desc, http.StatusOK
	if req.Method == http.MethodPost {
		body, status = ft.soap, ft.status
	}
	return &http.Response{
		StatusCode: status, Status: http.StatusText(status), Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{"Content-Type": {`text/xml; charset="utf-8"`}}, Body: io.NopCloser(bytes.NewReader(body)),
		ContentLength: int64(len(body)), Request: req,
	}, nil
}

const fuzzDesc = `<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0"><specVersion><major>1</major><minor>0</minor></specVersion>
<device><deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType><UDN>uuid:1</UDN>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANDevice:1</deviceType><UDN>uuid:2</UDN>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:1</deviceType><UDN>uuid:3</UDN>
<serviceList><service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>
<serviceId>urn:upnp-org:serviceId:WANIPConn1</serviceId><controlURL>/ctl/IPConn</controlURL>
<eventSubURL>/evt/IPConn</eventSubURL><SCPDURL>/WANIPCn.xml</SCPDURL></service></serviceList>
</device></deviceList></device></deviceList></device></root>`

const fuzzSOAP = `<?xml version="1.0"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" s:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body>
<u:GetExternalIPAddressResponse xmlns:u="urn:schemas-upnp-org:service:WANIPConnection:1"><NewExternalIPAddress>203.0.113.5</NewExternalIPAddress></u:GetExternalIPAddressResponse>
</s:Body></s:Envelope>`

const fuzzFault = `<?xml version="1.0"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" s:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body>
<s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail><UPnPError xmlns="urn:schemas-upnp-org:control-1-0">
<errorCode>718</errorCode><errorDescription>ConflictInMappingEntry</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>`

// FuzzIGD serves a device description and a SOAP answer to the code that
// reads them (fetchRoot, the WAN connection clients, externalAddr).
// Properties: no panic; a description that parses has its URL base set;
// an external address returned is valid and not IPv4-mapped.
func FuzzIGD(f *testing.F) {
	f.Add([]byte(fuzzDesc), []byte(fuzzSOAP), false)
	f.Add([]byte(fuzzDesc), []byte(fuzzFault), true)
	f.Add([]byte(fuzzDesc), []byte(strings.Replace(fuzzSOAP, "203.0.113.5", "0.0.0.0", 1)), false)
	f.Add([]byte(fuzzDesc), []byte(strings.Replace(fuzzSOAP, "203.0.113.5", "::ffff:1.2.3.4", 1)), false)
	f.Add([]byte(strings.Replace(fuzzDesc, "<device>", "<URLBase>http://[::1]:x</URLBase><device>", 1)), []byte("<"), false)
	f.Add([]byte("<root/>"), []byte{}, true)
	f.Fuzz(func(t *testing.T, desc, soapBody []byte, fault bool) {
		status := http.StatusOK
		if fault {
			status = http.StatusInternalServerError
		}
		hc := &http.Client{Transport: &fakeTransport{desc: desc, soap: soapBody, status: status}}
		loc, _ := url.Parse("http://192.168.1.1:5000/rootDesc.xml")
		ctx := context.Background()
		root, err := fetchRoot(ctx, hc, loc)
		if err != nil {
			return
		}
		if root.URLBase.Host == "" && root.URLBase.Scheme == "" && root.URLBase.Path == "" {
			t.Fatalf("no URL base set")
		}
		var conns []igdConn
		if cs, err := internetgateway2.NewWANIPConnection2ClientsFromRootDevice(root, loc); err == nil {
			for _, c := range cs {
				c.SOAPClient.HTTPClient = *hc
				conns = append(conns, c)
			}
		}
		if cs, err := internetgateway2.NewWANIPConnection1ClientsFromRootDevice(root, loc); err == nil {
			for _, c := range cs {
				c.SOAPClient.HTTPClient = *hc
				conns = append(conns, c)
			}
		}
		if cs, err := internetgateway2.NewWANPPPConnection1ClientsFromRootDevice(root, loc); err == nil {
			for _, c := range cs {
				c.SOAPClient.HTTPClient = *hc
				conns = append(conns, c)
			}
		}
		for _, conn := range conns[:min(len(conns), 4)] {
			c := &igdClient{conn: conn, loc: loc, local: fuzzLocal, gw: fuzzGW}
			ip, err := c.externalAddr(ctx)
			if err != nil {
				continue
			}
			if !ip.IsValid() || ip.Is4In6() {
				t.Fatalf("external address %v", ip)
			}
		}
	})
}
