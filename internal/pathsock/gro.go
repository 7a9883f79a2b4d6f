package pathsock

import (
	"net"
	"net/netip"

	"golang.org/x/net/ipv4"
)

// UDP GRO on receive (EnableGRO). The kernel hands a run of datagrams from
// one source, of one size (the last may be shorter), as one message whose
// control messages give the segment size. quic-go reads into buffers of
// one packet each, so a Conn with GRO reads into large buffers of its own
// (groReader) and hands the segments out: a datagram an InterceptFunc takes
// (a relay's data packets) straight from the large buffer, without a copy;
// one for quic-go copied into quic-go's next message, with the other
// control messages (ECN, packet info) of its run.

const (
	// groBatch is how many coalesced messages one recvmmsg reads.
	groBatch = 8
	// groBufSize is a coalesced message's buffer: the largest UDP
	// payload a GRO run can reach (64 KB).
	groBufSize = 1 << 16
	// groOOBSize is a message's room for control messages.
	groOOBSize = 128
)

// groReader holds the coalesced messages read by the last recvmmsg and
// where handing them out has got to. It is allocated at the first read
// with GRO (groBatch × groBufSize, 512 KiB): only Conns that asked for GRO
// carry it.
type groReader struct {
	ms    []ipv4.Message
	froms []netip.AddrPort
	segs  []int // each message's segment size (0: one datagram)
	n     int   // messages read
	i     int   // the message being handed out
	off   int   // how far into it
}

func newGROReader() *groReader {
	g := &groReader{ms: make([]ipv4.Message, groBatch), froms: make([]netip.AddrPort, groBatch), segs: make([]int, groBatch)}
	for i := range g.ms {
		g.ms[i].Buffers = [][]byte{make([]byte, groBufSize)}
		g.ms[i].OOB = make([]byte, groOOBSize)
	}
	return g
}

// pending reports whether segments read are left to hand out.
func (g *groReader) pending() bool { return g.i < g.n }

// loaded notes that n messages were read: each one's segment size is
// taken out of its control messages (splitGRO), and a message the kernel
// truncated keeps only its whole segments. It returns how many messages
// were runs of more than one datagram.
func (g *groReader) loaded(n int) (runs int) {
	g.n, g.i, g.off = n, 0, 0
	for i := range g.ms[:n] {
		m := &g.ms[i]
		seg, nn := splitGRO(m.OOB[:m.NN])
		m.NN = nn
		if seg <= 0 || seg >= m.N {
			seg = 0
		}
		if m.Flags&msgTrunc != 0 {
			if seg == 0 {
				m.N = 0 // a datagram larger than the buffer: not one this socket carries
			} else {
				m.N -= m.N % seg
			}
		}
		g.segs[i] = seg
		if seg > 0 {
			runs++
		}
	}
	return runs
}

// next returns the next segment and the index of its message; ok is false
// when none is left.
func (g *groReader) next() (b []byte, msg int, ok bool) {
	for g.i < g.n {
		m := &g.ms[g.i]
		if g.off >= m.N {
			g.i, g.off = g.i+1, 0
			continue
		}
		end := m.N
		if seg := g.segs[g.i]; seg > 0 {
			end = min(g.off+seg, m.N)
		}
		// Capped at its end: what an InterceptFunc appends to its
		// datagram must not land on the next one of the run.
		b, msg = m.Buffers[0][g.off:end:end], g.i
		g.off = end
		return b, msg, true
	}
	return nil, 0, false
}

// fill hands segments out into ms until ms is full or none is left: those
// an InterceptFunc takes go to it, the rest are copied into ms with their
// run's control messages and sources (froms), Addr set where the
// InterceptFunc translated them (as intercept does), else nil. It returns
// how many messages of ms it filled.
func (c *Conn) fill(g *groReader, ms []ipv4.Message, froms []netip.AddrPort) int {
	kept := 0
	var now int64
	for kept < len(ms) {
		b, i, ok := g.next()
		if !ok {
			break
		}
		from, oob := g.froms[i], g.ms[i].OOB[:g.ms[i].NN]
		var addr net.Addr
		if len(b) > 0 && b[0] < 0x40 && c.icpt.anyFor(b[0]) {
			src := unmapped(from)
			if h := c.icpt.lookup(b[0], src); h != nil {
				k, virt := h(b, src)
				if k <= 0 {
					continue
				}
				b, oob, addr = b[:k], nil, c.virtual(virt, &now)
			}
		}
		d := &ms[kept]
		if len(b) > len(d.Buffers[0]) {
			continue // larger than the reader's buffer: the kernel would have truncated it
		}
		d.N = copy(d.Buffers[0], b)
		d.NN = 0
		if len(oob) <= len(d.OOB) {
			d.NN = copy(d.OOB, oob)
		}
		d.Flags, d.Addr = 0, addr
		froms[kept] = from
		kept++
	}
	return kept
}
