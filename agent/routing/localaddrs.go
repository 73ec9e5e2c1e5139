package routing

import (
	"log/slog"
	"maps"
	"net/netip"
	"slices"

	"github.com/filament-net/filament/agent/node"
)

// localAddrs follows the accepted nodes' other addresses (their records'
// LocalAddrs, and the pod gateway of each of their pod CIDRs, its first
// address, which the node holds on filament_host) into the datapath's
// node_local_addrs map, which only the control ports' check reads: a
// pod's new flow to a control port of such an address is refused unless
// its policy names the port, as at a node's underlay address. An address
// is in the map while an accepted node lists it (counted: nodes may list
// the same one). Addresses only remote clusters' nodes list hold at most
// maxRemote entries together (MaxRemoteLocalAddrs when 0); past it a
// remote node's address is left out (the node is kept in short) and
// written when a remote address goes.
type localAddrs struct {
	of    map[string][]netip.Addr // node name -> the addresses written for it
	count map[netip.Addr]int
	local map[netip.Addr]int // of count, the listers of this cluster
	// remoteHeld: the addresses written that no node of this cluster lists.
	remoteHeld int
	maxRemote  int
	short      map[string]bool // remote nodes with addresses left out for the bound
	freed      bool            // a remote place was freed since the last refill
	full       bool            // a write was refused (map full): logged once
	remoteFull bool            // a remote address was left out for the bound: logged once
}

// MaxRemoteLocalAddrs bounds the node_local_addrs entries (65,536) that
// only remote clusters' nodes list: three quarters, so the rest stays for
// this cluster's nodes. Until 2026-12-06 nothing bounded them: remote
// nodes (49,152 in the nodes map, each listing up to 16 other addresses
// and its pod gateways) could fill the map, and a new local node's other
// addresses were not written, its control ports then open to every pod
// at them (TestRemoteLocalAddrsLeaveRoomForLocalOnes).
const MaxRemoteLocalAddrs = 49152

// setLocalAddrs makes n's other addresses (nil n: none) those of node
// name, writing and deleting map entries as their counts reach and leave
// zero. Called wherever the router takes or forgets a node's record.
func (r *Router) setLocalAddrs(name string, n *node.Node) {
	la := &r.local
	if la.of == nil {
		la.of, la.count, la.local, la.short = map[string][]netip.Addr{}, map[netip.Addr]int{}, map[netip.Addr]int{}, map[string]bool{}
	}
	maxRemote := la.bound()
	remote := clusterOf(name) != ""
	var now []netip.Addr
	if n != nil {
		// (node.Check bounds the list: every record is checked on the
		// way in.)
		for _, a := range n.ParsedLocalAddrs() {
			if r.inPodCIDR(a) {
				// A pod's address (listed by a holder of the kvstore's
				// credentials) would close those ports of that pod.
				slog.Warn("node_local_addrs: a node lists an address in a pod CIDR as its own; left out", "node", name, "addr", a)
				continue
			}
			if !slices.Contains(now, a) {
				now = append(now, a)
			}
		}
		// The gateways are the node's own (ipam: a pod CIDR's first
		// address), in its pod CIDR yet never a pod's. Until 2026-12-05
		// they were left out with the rest of the pod CIDRs, and in
		// native routing a pod reached another node's control ports at
		// its gateway (TestPodCannotReachControlPortsOnAnotherNodesGateway).
		// Not of a CIDR of fewer than four addresses: its "first address"
		// would be a pod's, or outside it; the list also lets an
		// address's ICMP errors pass as related (ct_related), found by a
		// review 2026-12-07.
		for _, s := range n.PodCIDRs {
			if p, err := netip.ParsePrefix(s); err == nil && p.Addr().Is4() && p.Bits() <= 30 {
				if gw := p.Masked().Addr().Next(); !slices.Contains(now, gw) {
					now = append(now, gw)
				}
			}
		}
	}
	old := la.of[name]
	var kept []netip.Addr
	short := false
	// New addresses first, then those gone: a shared address is never out
	// in between.
	for _, a := range now {
		if slices.Contains(old, a) {
			kept = append(kept, a)
			continue
		}
		if remote && la.count[a] == 0 && la.remoteHeld >= maxRemote {
			short = true
			if !la.remoteFull {
				la.remoteFull = true
				slog.Error("node_local_addrs: remote clusters' nodes hold their share; a remote node's other address is not written (pods are not kept off its control ports there) until another goes, logged once",
					"node", name, "addr", a, "max", maxRemote)
			}
			continue
		}
		kept = append(kept, a)
		la.count[a]++
		switch {
		case remote && la.count[a] == 1:
			la.remoteHeld++
		case !remote:
			if la.local[a]++; la.local[a] == 1 && la.count[a] > 1 {
				la.remoteHeld-- // only remote nodes listed it
				la.freed = true
			}
		}
		if la.count[a] == 1 {
			if err := r.dp.UpsertNodeLocalAddr(a); err != nil && !la.full {
				la.full = true
				slog.Error("node_local_addrs: a node's other address not written: pods are not kept off its control ports (logged once)", "node", name, "addr", a, "err", err)
			}
		}
	}
	var orphaned []netip.Addr // only remote nodes list them now, past the bound
	for _, a := range old {
		if slices.Contains(kept, a) {
			continue
		}
		la.count[a]--
		if !remote {
			if la.local[a]--; la.local[a] <= 0 {
				delete(la.local, a)
				if la.count[a] > 0 {
					if la.remoteHeld >= maxRemote {
						// Remote nodes listed it beside this cluster's,
						// free of the bound: it goes, theirs are short.
						orphaned = append(orphaned, a)
						continue
					}
					la.remoteHeld++ // only remote nodes list it now
				}
			}
		} else if la.count[a] <= 0 {
			la.remoteHeld--
			la.freed = true
		}
		if la.count[a] <= 0 {
			delete(la.count, a)
			if err := r.dp.DeleteNodeLocalAddr(a); err != nil {
				slog.Warn("node_local_addrs: delete", "node", name, "addr", a, "err", err)
			}
		}
	}
	if len(kept) == 0 {
		delete(la.of, name)
	} else {
		la.of[name] = kept
	}
	if short {
		la.short[name] = true
	} else {
		delete(la.short, name)
	}
	for _, a := range orphaned {
		for other, list := range la.of {
			if i := slices.Index(list, a); i >= 0 {
				la.of[other] = slices.Delete(list, i, i+1)
				if len(la.of[other]) == 0 {
					delete(la.of, other)
				}
				la.short[other] = true
			}
		}
		delete(la.count, a)
		if err := r.dp.DeleteNodeLocalAddr(a); err != nil {
			slog.Warn("node_local_addrs: delete", "addr", a, "err", err)
		}
	}
}

func (la *localAddrs) bound() int {
	if la.maxRemote > 0 {
		return la.maxRemote
	}
	return MaxRemoteLocalAddrs
}

// refillLocalAddrs gives the places remote addresses freed to the remote
// nodes left short, in order of name, while there is room. Called when a
// change is complete (Router.refill), not in the middle of one: an
// evicted node's pod CIDR is not yet its evicter's there. r.mu is held.
func (r *Router) refillLocalAddrs() {
	la := &r.local
	if !la.freed || len(la.short) == 0 {
		return
	}
	la.freed = false
	for _, name := range slices.Sorted(maps.Keys(la.short)) {
		if la.remoteHeld >= la.bound() {
			return
		}
		if n, ok := r.nodes[name]; ok {
			r.setLocalAddrs(name, &n)
		} else {
			delete(la.short, name)
		}
	}
}

// inPodCIDR says whether a is in this node's pod CIDR, this cluster's
// pool or a taken node's pod CIDR (one map lookup per prefix length).
func (r *Router) inPodCIDR(a netip.Addr) bool {
	if (r.own.IsValid() && r.own.Contains(a)) || (r.pool.IsValid() && r.pool.Contains(a)) {
		return true
	}
	for bits := 0; bits <= 32; bits++ {
		if len(r.claims.cidrs[netip.PrefixFrom(a, bits).Masked()]) > 0 {
			return true
		}
	}
	return false
}

// PruneLocalAddrs deletes the node_local_addrs entries no node the
// router holds lists (an earlier agent's, for nodes gone since). Call it
// once the cluster's nodes are learned.
func (r *Router) PruneLocalAddrs() {
	r.mu.Lock()
	defer r.mu.Unlock()
	have, err := r.dp.NodeLocalAddrs()
	if err != nil {
		slog.Warn("node_local_addrs: list", "err", err)
		return
	}
	for a := range have {
		if r.local.count[a] == 0 {
			if err := r.dp.DeleteNodeLocalAddr(a); err != nil {
				slog.Warn("node_local_addrs: delete", "addr", a, "err", err)
			}
		}
	}
}
