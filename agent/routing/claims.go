package routing

import (
	"net/netip"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/filament-net/filament/agent/node"
)

// claimIndex holds what the known nodes claim, their addresses and pod
// CIDRs, so that a node record meeting another cluster's claims is found
// with a few map lookups rather than a walk of every node (a mesh's sync
// brings tens of thousands of node records).
type claimIndex struct {
	addrs map[netip.Addr]map[string]bool   // node address → nodes
	cidrs map[netip.Prefix]map[string]bool // masked pod CIDR → nodes
	lens  [33]int                          // how many cidrs keys have each length
	// narrow: the pod CIDRs of MinCoverBits bits or more by their /16,
	// to find those inside a claimed prefix; abucket: the addresses by
	// their /16, likewise.
	narrow  map[netip.Prefix]map[netip.Prefix]bool
	abucket map[netip.Prefix]map[netip.Addr]bool
	// keys: WireGuard public keys (wgKey) → nodes (a peer is its key: a
	// record publishing another node's key would take over its peer).
	keys map[string]map[string]bool
}

// wgKey is n's WireGuard public key as the key it decodes to (base64
// skips line breaks, so a string compare would miss another spelling of
// a key), "" for none or one that does not parse (never a peer).
func wgKey(n node.Node) string {
	if n.WireGuardKey == "" {
		return ""
	}
	k, err := wgtypes.ParseKey(n.WireGuardKey)
	if err != nil {
		return ""
	}
	return k.String()
}

func addName(m map[string]bool, name string) map[string]bool {
	if m == nil {
		m = map[string]bool{}
	}
	m[name] = true
	return m
}

func (x *claimIndex) add(n node.Node) {
	if x.addrs == nil {
		x.addrs = map[netip.Addr]map[string]bool{}
		x.cidrs = map[netip.Prefix]map[string]bool{}
		x.narrow = map[netip.Prefix]map[netip.Prefix]bool{}
		x.abucket = map[netip.Prefix]map[netip.Addr]bool{}
		x.keys = map[string]map[string]bool{}
	}
	if k := wgKey(n); k != "" {
		x.keys[k] = addName(x.keys[k], n.Name)
	}
	if ip := n.IP(); ip.Is4() {
		if x.addrs[ip] == nil {
			b := addrBucket(ip)
			if x.abucket[b] == nil {
				x.abucket[b] = map[netip.Addr]bool{}
			}
			x.abucket[b][ip] = true
		}
		x.addrs[ip] = addName(x.addrs[ip], n.Name)
	}
	for _, c := range cidrs(n) {
		if !c.Addr().Is4() {
			continue
		}
		c = c.Masked()
		if x.cidrs[c] == nil {
			x.lens[c.Bits()]++
			if c.Bits() >= MinCoverBits {
				b := bucket(c)
				if x.narrow[b] == nil {
					x.narrow[b] = map[netip.Prefix]bool{}
				}
				x.narrow[b][c] = true
			}
		}
		x.cidrs[c] = addName(x.cidrs[c], n.Name)
	}
}

func (x *claimIndex) remove(n node.Node) {
	if k := wgKey(n); k != "" && x.keys[k][n.Name] {
		if delete(x.keys[k], n.Name); len(x.keys[k]) == 0 {
			delete(x.keys, k)
		}
	}
	if ip := n.IP(); ip.IsValid() && x.addrs[ip][n.Name] {
		delete(x.addrs[ip], n.Name)
		if len(x.addrs[ip]) == 0 {
			delete(x.addrs, ip)
			b := addrBucket(ip)
			delete(x.abucket[b], ip)
			if len(x.abucket[b]) == 0 {
				delete(x.abucket, b)
			}
		}
	}
	for _, c := range cidrs(n) {
		c = c.Masked()
		if !x.cidrs[c][n.Name] {
			continue
		}
		delete(x.cidrs[c], n.Name)
		if len(x.cidrs[c]) > 0 {
			continue
		}
		delete(x.cidrs, c)
		x.lens[c.Bits()]--
		if c.Bits() >= MinCoverBits {
			b := bucket(c)
			delete(x.narrow[b], c)
			if len(x.narrow[b]) == 0 {
				delete(x.narrow, b)
			}
		}
	}
}

func addrBucket(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, MinCoverBits).Masked() }

// around calls f with the nodes of each claimed pod CIDR q holding p (p
// itself among them; a /32 for an address) until f returns false, and
// tells whether it went through.
func (x *claimIndex) around(p netip.Prefix, f func(names map[string]bool, q netip.Prefix) bool) bool {
	for bits := 0; bits <= p.Bits(); bits++ {
		if x.lens[bits] == 0 {
			continue
		}
		q := netip.PrefixFrom(p.Addr(), bits).Masked()
		if !f(x.cidrs[q], q) {
			return false
		}
	}
	return true
}

// meets calls f for each node (other than n) whose address is n's or lies
// in one of n's pod CIDRs, or whose pod CIDR overlaps one of n's or holds
// n's address, or whose WireGuard key is n's, with what they share; f
// returns false to stop.
func (x *claimIndex) meets(n node.Node, f func(name, what string) bool) {
	// eachOf calls f for names but n's, q the claim they hold (an
	// address as a /32 when addr); what is formatted only for a call.
	eachOf := func(names map[string]bool, q netip.Prefix, addr bool) bool {
		for name := range names {
			if name == n.Name {
				continue
			}
			what := "pod CIDR " + q.String()
			if addr {
				what = "address " + q.Addr().String()
			}
			if !f(name, what) {
				return false
			}
		}
		return true
	}
	each := func(names map[string]bool, q netip.Prefix) bool { return eachOf(names, q, false) }
	eachAddr := func(names map[string]bool, a netip.Addr) bool {
		return eachOf(names, netip.PrefixFrom(a, 32), true)
	}
	for name := range x.keys[wgKey(n)] {
		if name != n.Name && !f(name, "WireGuard key") { // no key: none indexed under ""
			return
		}
	}
	if ip := n.IP(); ip.Is4() {
		if !eachAddr(x.addrs[ip], ip) || !x.around(netip.PrefixFrom(ip, 32), each) {
			return
		}
	}
	for _, p := range cidrs(n) {
		if !p.Addr().Is4() {
			continue
		}
		p = p.Masked()
		// The claimed CIDRs holding p (p itself among them).
		if !x.around(p, each) {
			return
		}
		// The claimed CIDRs and addresses inside p: in p's /16, or, for
		// a wider p, anywhere.
		if p.Bits() < MinCoverBits {
			for q := range x.cidrs {
				if q.Bits() > p.Bits() && p.Contains(q.Addr()) && !each(x.cidrs[q], q) {
					return
				}
			}
			for a := range x.addrs {
				if p.Contains(a) && !eachAddr(x.addrs[a], a) {
					return
				}
			}
			continue
		}
		longer := false
		for bits := p.Bits() + 1; bits <= 32 && !longer; bits++ {
			longer = x.lens[bits] > 0
		}
		if longer {
			for q := range x.narrow[bucket(p)] {
				if q.Bits() > p.Bits() && p.Contains(q.Addr()) && !each(x.cidrs[q], q) {
					return
				}
			}
		}
		for a := range x.abucket[bucket(p)] {
			if p.Contains(a) && !eachAddr(x.addrs[a], a) {
				return
			}
		}
	}
}
