package matrix

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/reachp2p/reach/lab/natlab"
)

// Variant is one topology the matrix runs in: where the server is, how
// long the links are, whether the sites are dual-stack, and which kinds
// take part. Each variant runs in a lab of its own, one after the other.
type Variant struct {
	// Name is the variant's short name (--variants).
	Name string
	// About says in a sentence what the topology is and what it tests.
	About string
	// Kinds take part in the full run: every unordered pair of them,
	// each kind with itself too.
	Kinds []Kind
	// Short are the CI's pairs of this variant (--pairs short,
	// TestLabMatrixShort); nil: the variant has no short run.
	Short []Pair
	// Delay, ServerDelay and IPv6 are the topology (see Config).
	// Delay < 0: no delay on the access links.
	Delay       time.Duration
	ServerDelay time.Duration
	IPv6        bool
}

// The variants' names.
const (
	VariantMain      = "main"
	VariantZeroDelay = "zero-delay"
	VariantFarServer = "far-server"
	VariantIPv6      = "ipv6"
)

// Variants lists every variant of the full matrix, in the order they run:
//
//   - main: every kind, 20 ms on every access link, the server near;
//   - zero-delay: every kind with UDP, no delay anywhere: the listener's
//     punch packets and the dialler's reach the routers in the same
//     instant, the race a Linux router without an input firewall loses;
//   - far-server: the same kinds, the server 60 ms away (one way) while the
//     peers are 5 ms apart (2.5 ms on each access link): the listener's
//     first packets reach the dialler's router long before the
//     listener's answer reaches the dialler;
//   - ipv6: dual-stack sites (global IPv6 behind stateful firewalls, IPv4
//     behind the NAT) of the kinds whose IPv4 answers differ, 20 ms links:
//     the best path is direct over IPv6.
func Variants() []Variant {
	k := func(n natlab.NAT) Kind { return Kind(n) }
	pr, lpr := k(natlab.PortRestricted), LinuxHost(natlab.Kind(natlab.PortRestricted))
	lsym := LinuxHost(natlab.Kind(natlab.Symmetric))
	// zero-delay and far-server: every kind with UDP but the sequential
	// symmetric NATs, which TestLabPredict (lab/e2e) measures with no
	// delay and with the server far away (20/20 per cell); in the matrix
	// they would add a quarter to both variants' time.
	var withUDP []Kind
	for _, kd := range Kinds() {
		if !kd.noUDP() && kd.Base() != natlab.Kind(natlab.SymmetricSeq) {
			withUDP = append(withUDP, kd)
		}
	}
	return []Variant{
		{
			Name:  VariantMain,
			About: "every kind; 20 ms one-way on every access link, the server near (its link not delayed)",
			Kinds: Kinds(), Short: ShortPairs(), Delay: 20 * time.Millisecond,
		},
		{
			Name:  VariantZeroDelay,
			About: "every kind with UDP; no delay on any link, so both peers' first packets meet at the routers at once",
			Kinds: withUDP, Delay: -1,
			// The double NAT listener: its primers die at the carrier,
			// and before the first flight was sent again on validation
			// the supernode won one dial in three (docs/matrix.md).
			Short: []Pair{{lpr, lpr}, {LinuxHost(natlab.Kind(natlab.RestrictedCone)), lsym}, {pr, LinuxHost(natlab.KindDouble)}},
		},
		{
			Name: VariantFarServer,
			About: "every kind with UDP; the server 60 ms one-way away, the peers near " +
				"(2.5 ms on each access link, 5 ms one-way between them)",
			Kinds: withUDP, Delay: 2500 * time.Microsecond, ServerDelay: 60 * time.Millisecond,
			Short: []Pair{{lpr, lpr}},
		},
		{
			Name: VariantIPv6,
			About: "dual-stack sites: a global IPv6 prefix behind each router's stateful firewall besides the IPv4 NAT " +
				"(linux-host sites without an ISP hop here); 20 ms on every access link",
			Kinds: []Kind{Kind(natlab.Open), k(natlab.FullCone), pr, lpr, k(natlab.Symmetric), lsym},
			Delay: 20 * time.Millisecond, IPv6: true,
			Short: []Pair{{k(natlab.Symmetric), lpr}},
		},
	}
}

// ErrUnknownVariant: a variant name that Variants does not list.
var ErrUnknownVariant = errors.New("matrix: unknown variant")

// ParseVariants reads a comma-separated list of variant names ("all":
// every variant), in the order Variants gives, each once.
func ParseVariants(s string) ([]Variant, error) {
	all := Variants()
	if s == "all" {
		return all, nil
	}
	want := map[string]bool{}
	for _, name := range strings.Split(s, ",") {
		name = strings.TrimSpace(name)
		if !slices.ContainsFunc(all, func(v Variant) bool { return v.Name == name }) {
			var names []string
			for _, v := range all {
				names = append(names, v.Name)
			}
			return nil, fmt.Errorf("%w %q (one of %s, or all)", ErrUnknownVariant, name, strings.Join(names, ", "))
		}
		want[name] = true
	}
	var out []Variant
	for _, v := range all {
		if want[v.Name] {
			out = append(out, v)
		}
	}
	return out, nil
}

// Pairs returns every unordered pair of the variant's kinds, each kind
// with itself included.
func (v Variant) Pairs() []Pair { return pairsOf(v.Kinds) }

// Config returns base (runs, size, loggers...) with the variant's
// topology and pairs: the full ones, or Short with short.
func (v Variant) Config(base Config, short bool) Config {
	base.Variant = v.Name
	base.Pairs = v.Pairs()
	if short {
		base.Pairs = v.Short
	}
	base.Delay, base.ServerDelay, base.IPv6 = v.Delay, v.ServerDelay, v.IPv6
	return base
}

// Directions counts the directions pairs make: two per pair, one for a
// kind paired with itself.
func Directions(pairs []Pair) int {
	n := 0
	for _, p := range pairs {
		n += 2
		if p.A == p.B {
			n--
		}
	}
	return n
}

func pairsOf(ks []Kind) []Pair {
	var out []Pair
	for i := range ks {
		for j := i; j < len(ks); j++ {
			out = append(out, Pair{ks[i], ks[j]})
		}
	}
	return out
}
