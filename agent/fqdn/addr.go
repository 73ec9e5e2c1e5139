package fqdn

import (
	"net/netip"
	"sync"
)

// special are IPv4 ranges no DNS answer makes a toFQDNs address: this
// network (0/8), loopback, link-local (cloud metadata services answer at
// 169.254.169.254), multicast, the reserved range with the limited
// broadcast address, and the cloud platform addresses outside them. A
// server a pod may reach (one it runs, or a zone that maps names to any
// address) could otherwise have a toFQDNs rule allow the pod to reach
// them.
var special = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("240.0.0.0/4"),
	// Cloud platform endpoints outside the link-local range: Azure's
	// WireServer and Alibaba Cloud's metadata service (inside
	// 100.64.0.0/10, which pods may use, so only the address).
	netip.MustParsePrefix("168.63.129.16/32"),
	netip.MustParsePrefix("100.100.100.200/32"),
}

// Learnable reports whether a DNS answer's address may be learned: an
// IPv4 unicast address outside the special ranges (an IPv4-mapped IPv6
// address is not IPv4).
func Learnable(a netip.Addr) bool {
	if !a.Is4() {
		return false
	}
	for _, p := range special {
		if p.Contains(a) {
			return false
		}
	}
	return true
}

// maxFirstSeen bounds the addresses a FirstSeen remembers: past it, none
// is reported any more (special ranges hold millions of addresses).
const maxFirstSeen = 4096

// FirstSeen remembers the special addresses already reported (logged)
// by a consumer of other sources' addresses (cloud groups), so that each
// is reported once. Its zero value is ready; it is safe for concurrent use.
type FirstSeen struct {
	mu   sync.Mutex
	seen map[netip.Addr]bool
}

// First reports whether a was not seen before (and remembers it).
func (f *FirstSeen) First(a netip.Addr) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.seen[a] || len(f.seen) >= maxFirstSeen {
		return false
	}
	if f.seen == nil {
		f.seen = map[netip.Addr]bool{}
	}
	f.seen[a] = true
	return true
}
