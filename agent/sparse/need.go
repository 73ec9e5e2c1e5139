// Package sparse decides which pods of remote clusters need their own /32
// entry in the node's BPF ipcache. Every remote node's pod CIDR is covered
// by one entry whose identity, the cluster's cover identity, stands for
// "some pod of cluster X"; a pod's own entry is needed only where its
// identity is decided differently from the cover identity. Need mirrors the
// policy map entries the resolver hands to the kernel, keyed by peer
// identity, and compares each remote identity's entries with its cluster's
// cover identity's: equal entries give equal verdicts (the datapath looks
// up (endpoint, direction, peer identity, L4) and (…, identity 0, …) and
// nothing else of the peer), so such a pod's address may resolve to the
// cover identity. Store keeps the remote entries compactly and says which
// of them must be installed.
package sparse

import (
	"maps"
	"net/netip"
	"sync"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/labels"
	"github.com/filament-net/filament/agent/policy"
)

// coverLocal is the cluster-local number of a cover identity: below
// identity.LocalMin, so no allocator ever hands it out.
const coverLocal = 1

// Cover is the cover identity of cluster: the identity a remote node's pod
// CIDR entry carries.
func Cover(cluster uint32) identity.NumericIdentity { return identity.Compose(cluster, coverLocal) }

// IsCover reports whether id is a cover identity.
func IsCover(id identity.NumericIdentity) bool {
	return !id.IsReserved() && !id.IsLocal() && id.ClusterID() != 0 && uint32(id)&identity.LocalMax == coverLocal
}

// CoverIdentity is cluster's cover identity with its one label, the
// cluster's name: selectors naming the cluster select it as they select
// every pod of the cluster.
func CoverIdentity(cluster uint32, name string) identity.Identity {
	return identity.Identity{ID: Cover(cluster), Labels: labels.Labels{{Source: labels.SourceK8s, Key: labels.KeyCluster, Value: name}}}
}

// slot is a policy map key without its peer identity.
type slot struct {
	ep  uint16
	dir policy.Direction
	l4  policy.L4
}

// verdict is what the kernel holds of a policy map value (the rule it
// came from is the agent's, not the datapath's).
type verdict struct {
	deny bool
	l7   string
}

// Diff is what a change did to the need: identities whose need flipped,
// and clusters whose cover identity's entries changed (each of their
// identities may have flipped, those without entries included).
type Diff struct {
	Identities map[identity.NumericIdentity]bool // → needed now
	Clusters   map[uint32]bool
	// CIDRs: CIDR identity prefixes added or removed (an address inside
	// one longer than its cover needs its own entry).
	CIDRs []netip.Prefix
}

// Empty reports whether d changes nothing.
func (d Diff) Empty() bool {
	return len(d.Identities) == 0 && len(d.Clusters) == 0 && len(d.CIDRs) == 0
}

// Need follows the policy map changes and answers which remote identities
// are distinguished from their cluster's cover identity.
type Need struct {
	mu      sync.Mutex
	local   uint32 // this cluster's ID: its identities are never covered
	ingress bool   // ingress takes the source identity from the ipcache
	byID    map[identity.NumericIdentity]map[slot]verdict
	needed  map[identity.NumericIdentity]bool // identities with entries: distinguished
	cidrs   map[int]map[netip.Prefix]bool     // CIDR identities' prefixes by length
}

// NewNeed follows the policy of a node of cluster local. ingress: the
// node's ingress decisions take the source identity from the ipcache
// (native routing, or encryption in tunnel mode), so ingress entries
// distinguish identities too; else only egress entries do (in tunnel mode
// the source identity of ingress traffic travels in the VNI).
func NewNeed(local uint32, ingress bool) *Need {
	return &Need{local: local, ingress: ingress, byID: map[identity.NumericIdentity]map[slot]verdict{},
		needed: map[identity.NumericIdentity]bool{}, cidrs: map[int]map[netip.Prefix]bool{}}
}

// covered says whether id is a remote pod identity that a cover may stand for.
func (n *Need) covered(id identity.NumericIdentity) bool {
	c := id.ClusterID()
	return c != 0 && c != n.local
}

func (n *Need) relevant(k policy.MapKey) bool {
	return n.covered(k.Identity) && (k.Dir == policy.Egress || n.ingress)
}

// Apply takes the change the resolver made (before or after it is written
// to the kernel) and returns what it did to the need.
func (n *Need) Apply(c policy.Change) Diff {
	n.mu.Lock()
	defer n.mu.Unlock()
	touched := map[identity.NumericIdentity]bool{}
	for _, k := range c.Deletes {
		if !n.relevant(k) {
			continue
		}
		if m := n.byID[k.Identity]; m != nil {
			delete(m, slot{k.Endpoint, k.Dir, k.L4})
			if len(m) == 0 {
				delete(n.byID, k.Identity)
			}
		}
		touched[k.Identity] = true
	}
	for k, v := range c.Upserts {
		if !n.relevant(k) {
			continue
		}
		m := n.byID[k.Identity]
		if m == nil {
			m = map[slot]verdict{}
			n.byID[k.Identity] = m
		}
		m[slot{k.Endpoint, k.Dir, k.L4}] = verdict{v.Deny, v.L7}
		touched[k.Identity] = true
	}
	d := Diff{Identities: map[identity.NumericIdentity]bool{}, Clusters: map[uint32]bool{}}
	for p := range c.CIDRUpserts {
		p = p.Masked()
		if n.cidrs[p.Bits()] == nil {
			n.cidrs[p.Bits()] = map[netip.Prefix]bool{}
		}
		if !n.cidrs[p.Bits()][p] {
			n.cidrs[p.Bits()][p] = true
			d.CIDRs = append(d.CIDRs, p)
		}
	}
	for _, p := range c.CIDRDeletes {
		p = p.Masked()
		if n.cidrs[p.Bits()][p] {
			delete(n.cidrs[p.Bits()], p)
			if len(n.cidrs[p.Bits()]) == 0 {
				delete(n.cidrs, p.Bits())
			}
			d.CIDRs = append(d.CIDRs, p)
		}
	}
	dirty := map[identity.NumericIdentity]bool{}
	for id := range touched {
		if IsCover(id) {
			d.Clusters[id.ClusterID()] = true
		} else {
			dirty[id] = true
		}
	}
	if len(d.Clusters) > 0 {
		for id := range n.needed {
			if d.Clusters[id.ClusterID()] {
				dirty[id] = true
			}
		}
		for id := range n.byID {
			if d.Clusters[id.ClusterID()] && !IsCover(id) {
				dirty[id] = true
			}
		}
	}
	for id := range dirty {
		was := n.neededLocked(id)
		if _, has := n.byID[id]; has {
			n.needed[id] = !maps.Equal(n.byID[id], n.byID[Cover(id.ClusterID())])
		} else {
			delete(n.needed, id)
		}
		if now := n.neededLocked(id); now != was || d.Clusters[id.ClusterID()] {
			d.Identities[id] = now
		}
	}
	return d
}

// neededLocked: an identity with entries is needed when they differ from
// its cover's; one without when its cover has any.
func (n *Need) neededLocked(id identity.NumericIdentity) bool {
	if !n.covered(id) || IsCover(id) {
		return !n.covered(id)
	}
	if v, ok := n.needed[id]; ok {
		return v
	}
	return len(n.byID[Cover(id.ClusterID())]) > 0
}

// Needed reports whether an address of identity id needs its own entry
// because of policy: an identity of this cluster (or reserved, or local)
// always does; a remote one when some local endpoint's entries in a
// direction that reads the ipcache tell it apart from its cover.
func (n *Need) Needed(id identity.NumericIdentity) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.neededLocked(id)
}

// InLongerCIDR reports whether addr lies in a CIDR identity's prefix
// longer than cover: the full ipcache resolves it to the pod's identity
// (its /32), a sparse one without the /32 to the CIDR identity, so it
// needs its own entry.
func (n *Need) InLongerCIDR(addr netip.Addr, cover netip.Prefix) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	for bits, set := range n.cidrs {
		if bits <= cover.Bits() {
			continue
		}
		if p, err := addr.Prefix(bits); err == nil && set[p] {
			return true
		}
	}
	return false
}
