package routing

import (
	"errors"
	"net/netip"
	"slices"
	"strings"

	"log/slog"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/agent/sparse"
)

// MinCoverBits: a remote pod CIDR shorter than this gets no cover entry
// (its pods get their /32s), so a remote cluster cannot claim a large part
// of the address space for its cover identity.
const MinCoverBits = 16

// compactEntry is a remote cluster's ipcache entry the router holds
// without its pod's names: 8 bytes, keyed by the address in its node's map.
type compactEntry struct {
	id   identity.NumericIdentity
	host uint32 // the entry's host IP (tunnel endpoint)
}

// sparseState is the router's part of the sparse remote ipcache: remote
// clusters' entries of known nodes inside those nodes' pod CIDRs kept
// compactly, the covers written for remote nodes' pod CIDRs, and the
// entries written as /32s because the need says so.
type sparseState struct {
	need      *sparse.Need
	localCIDR netip.Prefix
	compact   map[string]map[uint32]compactEntry // qualified remote node → address → entry
	covers    map[string][]netip.Prefix          // remote node → pod CIDRs written as covers
	installed map[netip.Addr]bool                // compact entries written as /32s
	clusterID map[string]uint32                  // remote cluster name → ID, from its entries' identities (checked by the mesh)
	// index: pod CIDRs of every known node with at least MinCoverBits
	// bits, by their /16, for overlap checks.
	index map[netip.Prefix]map[nodeCIDR]bool
	// byCIDR: the same CIDRs by themselves (masked) → their nodes, and
	// lens: how many of them have each prefix length, so that finding the
	// node of an address takes one lookup per length in use, not a walk of
	// every node in its /16.
	byCIDR map[netip.Prefix]map[string]bool
	lens   [33]int
}

type nodeCIDR struct {
	node string
	p    netip.Prefix
}

// SetSparse turns on the sparse remote ipcache (call before anything is
// learned): remote clusters' pod CIDRs get one cover entry each and a
// remote pod its own /32 only where need says so. localCIDR is this
// node's pod CIDR (no cover may overlap it).
func (r *Router) SetSparse(need *sparse.Need, localCIDR netip.Prefix) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sp = &sparseState{need: need, localCIDR: localCIDR, compact: map[string]map[uint32]compactEntry{},
		covers: map[string][]netip.Prefix{}, installed: map[netip.Addr]bool{}, clusterID: map[string]uint32{},
		index: map[netip.Prefix]map[nodeCIDR]bool{}, byCIDR: map[netip.Prefix]map[string]bool{}}
}

// clusterOf is the cluster of a qualified remote node name ("" for a node
// of this cluster).
func clusterOf(name string) string {
	c, _, ok := strings.Cut(name, "/")
	if !ok {
		return ""
	}
	return c
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func addrOf(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func bucket(p netip.Prefix) netip.Prefix { return netip.PrefixFrom(p.Addr(), MinCoverBits).Masked() }

// indexNode adds (add) or removes n's pod CIDRs in the overlap index and
// returns the other nodes whose CIDRs overlap them.
func (s *sparseState) indexNode(n node.Node, add bool) []string {
	var others []string
	for _, c := range cidrs(n) {
		if c.Bits() < MinCoverBits {
			continue
		}
		c = c.Masked()
		b := bucket(c)
		for nc := range s.index[b] {
			if nc.node != n.Name && nc.p.Overlaps(c) {
				others = append(others, nc.node)
			}
		}
		nc := nodeCIDR{n.Name, c}
		if add {
			if s.index[b] == nil {
				s.index[b] = map[nodeCIDR]bool{}
			}
			if !s.index[b][nc] {
				s.index[b][nc] = true
				if s.byCIDR[c] == nil {
					s.byCIDR[c] = map[string]bool{}
				}
				s.byCIDR[c][n.Name] = true
				s.lens[c.Bits()]++
			}
		} else if s.index[b][nc] {
			delete(s.index[b], nc)
			if len(s.index[b]) == 0 {
				delete(s.index, b)
			}
			delete(s.byCIDR[c], n.Name)
			if len(s.byCIDR[c]) == 0 {
				delete(s.byCIDR, c)
			}
			s.lens[c.Bits()]--
		}
	}
	return others
}

// sparseEntry says whether e is held in the compact store: an entry of a
// remote cluster's known node inside its pod CIDRs.
func (r *Router) sparseEntry(e ipcache.Entry) bool {
	if r.sp == nil || clusterOf(e.Node) == "" || !e.IP.Is4() {
		return false
	}
	n, known := r.nodes[e.Node]
	return known && InPodCIDRs(e.IP, n)
}

// wantCovers are the pod CIDRs of node name to write as covers: a remote
// node that is up, whose cluster's ID is known, each CIDR with at least
// MinCoverBits bits overlapping neither this node's pod CIDR nor another
// node's.
func (r *Router) wantCovers(name string) []netip.Prefix {
	s := r.sp
	n, known := r.nodes[name]
	if s == nil || !known || r.down[name] || s.clusterID[clusterOf(name)] == 0 || !n.IP().IsValid() {
		return nil
	}
	var out []netip.Prefix
	for _, c := range cidrs(n) {
		c = c.Masked()
		if c.Bits() < MinCoverBits || !c.Addr().Is4() || (s.localCIDR.IsValid() && s.localCIDR.Overlaps(c)) {
			continue
		}
		clash := false
		for nc := range s.index[bucket(c)] {
			if nc.node != name && nc.p.Overlaps(c) {
				clash = true
				break
			}
		}
		if !clash {
			out = append(out, c)
		}
	}
	return out
}

// tunnelOf is the tunnel endpoint written with a remote node's entries.
func (r *Router) tunnelOf(host netip.Addr) netip.Addr {
	if r.mode == Tunnel || r.enc != nil || r.xfrm != nil {
		return host
	}
	return netip.Addr{}
}

// wantSlash32 says whether a compact entry of node name needs its own
// entry: no cover holds it, its tunnel endpoint is not its node's, its
// identity is told apart from the cover's by policy, or it lies in a CIDR
// identity's prefix longer than its cover.
func (r *Router) wantSlash32(name string, ip netip.Addr, ce compactEntry) bool {
	n := r.nodes[name]
	var cover netip.Prefix
	for _, c := range r.sp.covers[name] {
		if c.Contains(ip) {
			cover = c
			break
		}
	}
	if !cover.IsValid() || ce.host != u32(n.IP()) {
		return true
	}
	return r.sp.need.Needed(ce.id) || r.sp.need.InLongerCIDR(ip, cover)
}

// Phases of a sparse sync: what becomes needed is written before a
// policy change reaches the kernel, what stops being needed removed after.
const (
	phaseInstall = 1 << iota
	phaseRemove
	phaseBoth = phaseInstall | phaseRemove
)

// syncCompact writes or removes the /32 of one compact entry as wanted.
func (r *Router) syncCompact(name string, ip netip.Addr, ce compactEntry, phase int) {
	s := r.sp
	want := !r.down[name] && r.wantSlash32(name, ip, ce)
	switch {
	case want && phase&phaseInstall != 0:
		p := netip.PrefixFrom(ip, 32)
		if err := r.putRemote(p, func() error { return r.dp.UpsertIPCacheTunnel(p, ce.id, r.tunnelOf(addrOf(ce.host))) }); err != nil && !errors.Is(err, errRemoteBudget) {
			slog.Error("remote ipcache entry", "ip", ip, "err", err)
		}
		s.installed[ip] = true
	case !want && s.installed[ip] && phase&phaseRemove != 0:
		r.deleteIPCache(netip.PrefixFrom(ip, 32))
		delete(s.installed, ip)
	}
}

// syncNode brings node name's covers and compact entries in line: new
// covers first, then the /32s now needed, then the covers gone, then the
// /32s no longer needed; no address is without its entry in between.
func (r *Router) syncNode(name string) {
	s := r.sp
	want, have := r.wantCovers(name), s.covers[name]
	n := r.nodes[name]
	cover := sparse.Cover(s.clusterID[clusterOf(name)])
	for _, c := range want {
		if !slices.Contains(have, c) {
			if err := r.putRemote(c, func() error { return r.dp.UpsertIPCacheCover(c, cover, r.tunnelOf(n.IP())) }); err != nil && !errors.Is(err, errRemoteBudget) {
				slog.Error("remote pod CIDR cover entry", "node", name, "cidr", c, "err", err)
			}
		}
	}
	// The /32s are decided against the union while both are written.
	s.covers[name] = want
	for a, ce := range s.compact[name] {
		r.syncCompact(name, addrOf(a), ce, phaseInstall)
	}
	for _, c := range have {
		if !slices.Contains(want, c) {
			r.deleteIPCache(c)
		}
	}
	if len(want) == 0 {
		delete(s.covers, name)
	}
	for a, ce := range s.compact[name] {
		r.syncCompact(name, addrOf(a), ce, phaseRemove)
	}
}

// dropCovers removes node name's covers (its /32s are written first).
func (r *Router) dropCovers(name string) {
	if r.sp == nil || len(r.sp.covers[name]) == 0 {
		return
	}
	have := r.sp.covers[name]
	delete(r.sp.covers, name)
	for a, ce := range r.sp.compact[name] {
		r.syncCompact(name, addrOf(a), ce, phaseInstall)
	}
	for _, c := range have {
		r.deleteIPCache(c)
	}
}

// sparseForget takes a remote node's covers away and moves its compact
// entries back to the held ones (written as /32s) before its record
// changes or goes; it returns the nodes whose pod CIDRs overlapped it.
func (r *Router) sparseForget(old node.Node) []string {
	if r.sp == nil {
		return nil
	}
	// Every node's pod CIDRs were indexed (sparseLearn); a node of this
	// cluster's too, and until 2026-12-04 those stayed after it went.
	others := r.sp.indexNode(old, false)
	if clusterOf(old.Name) != "" {
		r.dropCovers(old.Name)
		r.fromCompact(old.Name)
	}
	return others
}

// sparseLearn indexes a node's pod CIDRs and, for a remote node, moves its
// held entries into the compact store and writes its covers; it returns
// the nodes whose pod CIDRs overlap it.
func (r *Router) sparseLearn(n node.Node) []string {
	if r.sp == nil {
		return nil
	}
	others := r.sp.indexNode(n, true)
	if clusterOf(n.Name) != "" {
		r.toCompact(n.Name)
		r.syncNode(n.Name)
	}
	return others
}

// syncNodes syncs the remote nodes among names (overlap changed).
func (r *Router) syncNodes(names []string) {
	if r.sp == nil {
		return
	}
	for _, name := range names {
		if _, known := r.nodes[name]; known && clusterOf(name) != "" {
			r.syncNode(name)
		}
	}
}

// toCompact moves the held entries of node name that belong in the compact
// store there (the node became known).
func (r *Router) toCompact(name string) {
	if r.sp == nil || clusterOf(name) == "" {
		return
	}
	r.heldOf(name, func(e ipcache.Entry) {
		if r.sparseEntry(e) {
			r.drop(e.IP)
			r.putCompact(e)
			r.sp.installed[e.IP] = true // it may be written: syncNode decides
		}
	})
}

// fromCompact moves node name's compact entries back to the held entries
// (its record changed or went: they are judged as any entry again); after
// dropCovers they are all written as /32s unless the node is down.
func (r *Router) fromCompact(name string) {
	if r.sp == nil {
		return
	}
	for a, ce := range r.sp.compact[name] {
		ip := addrOf(a)
		r.hold(ipcache.Entry{IP: ip, Identity: ce.id, HostIP: addrOf(ce.host), Node: name})
		delete(r.sp.installed, ip)
	}
	delete(r.sp.compact, name)
}

func (r *Router) putCompact(e ipcache.Entry) {
	m := r.sp.compact[e.Node]
	if m == nil {
		m = map[uint32]compactEntry{}
		r.sp.compact[e.Node] = m
	}
	host := uint32(0)
	if h := r.entryTunnel(e); h.Is4() {
		host = u32(h)
	}
	m[u32(e.IP)] = compactEntry{id: e.Identity, host: host}
}

// compactOwner finds the node whose compact store holds ip (a node of the
// overlap index whose pod CIDR holds it).
func (r *Router) compactOwner(ip netip.Addr) (string, compactEntry, bool) {
	if r.sp == nil || !ip.Is4() {
		return "", compactEntry{}, false
	}
	// An address is held by at most one node (a change removes it from
	// the previous holder first).
	for bits := 32; bits >= MinCoverBits; bits-- {
		if r.sp.lens[bits] == 0 {
			continue
		}
		for n := range r.sp.byCIDR[netip.PrefixFrom(ip, bits).Masked()] {
			if ce, ok := r.sp.compact[n][u32(ip)]; ok {
				return n, ce, true
			}
		}
	}
	return "", compactEntry{}, false
}

// sparseEntryChanged follows a remote entry in sparse mode (owner: the
// compact store's holder of its address, if owned); it reports false
// when the entry is not the compact store's (the caller goes on).
func (r *Router) sparseEntryChanged(e ipcache.Entry, deleted bool, owner string, owned bool) bool {
	if r.sp == nil {
		return false
	}
	// Wherever the address was held before goes first.
	if owned {
		delete(r.sp.compact[owner], u32(e.IP))
		if len(r.sp.compact[owner]) == 0 {
			delete(r.sp.compact, owner)
		}
		if (deleted || owner != e.Node) && r.sp.installed[e.IP] {
			r.deleteIPCache(netip.PrefixFrom(e.IP, 32))
			delete(r.sp.installed, e.IP)
		}
	}
	if deleted {
		return false // the held entries' path deletes the rest
	}
	if c := clusterOf(e.Node); c != "" && e.Identity.ClusterID() != 0 && r.sp.clusterID[c] != e.Identity.ClusterID() {
		r.sp.clusterID[c] = e.Identity.ClusterID()
		for name := range r.nodes {
			if clusterOf(name) == c {
				r.syncNode(name)
			}
		}
	}
	if !r.sparseEntry(e) {
		return false
	}
	if old, had := r.entries[e.IP]; had {
		r.drop(e.IP)
		if old.Node != e.Node || !r.entryOK(old) {
			r.deleteIPCache(netip.PrefixFrom(e.IP, 32))
		}
	}
	r.putCompact(e)
	r.syncCompact(e.Node, e.IP, r.sp.compact[e.Node][u32(e.IP)], phaseBoth)
	return true
}

// Reneed applies a change of the need: the /32s it makes needed are
// written (install), or those it makes unneeded removed (!install). The
// engine calls it with install before it writes the policy change and
// without after.
func (r *Router) Reneed(d sparse.Diff, install bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	defer r.refill() // before the unlock: a remote key that went frees a place
	if r.sp == nil || d.Empty() {
		return
	}
	phase := phaseRemove
	if install {
		phase = phaseInstall
	}
	byCluster := map[uint32]string{}
	for name, id := range r.sp.clusterID {
		byCluster[id] = name
	}
	clusters := map[string]bool{}
	for c := range d.Clusters {
		clusters[byCluster[c]] = true
	}
	ids := map[string]map[identity.NumericIdentity]bool{}
	for id := range d.Identities {
		c := byCluster[id.ClusterID()]
		if ids[c] == nil {
			ids[c] = map[identity.NumericIdentity]bool{}
		}
		ids[c][id] = true
	}
	for name, m := range r.sp.compact {
		c := clusterOf(name)
		all := clusters[c] || slices.ContainsFunc(d.CIDRs, func(p netip.Prefix) bool {
			return slices.ContainsFunc(r.sp.covers[name], p.Overlaps)
		})
		if !all && ids[c] == nil {
			continue
		}
		for a, ce := range m {
			if all || ids[c][ce.id] {
				r.syncCompact(name, addrOf(a), ce, phase)
			}
		}
	}
}

// sparseWanted adds the covers and the compact entries written as /32s.
func (r *Router) sparseWanted(out map[netip.Prefix]ipcache.Entry) {
	if r.sp == nil {
		return
	}
	for name, cs := range r.sp.covers {
		for _, c := range cs {
			out[c] = ipcache.Entry{IP: c.Addr(), Identity: sparse.Cover(r.sp.clusterID[clusterOf(name)]), HostIP: r.nodes[name].IP(), Node: name}
		}
	}
	for ip := range r.sp.installed {
		if name, ce, ok := r.compactOwner(ip); ok {
			out[netip.PrefixFrom(ip, 32)] = ipcache.Entry{IP: ip, Identity: ce.id, HostIP: addrOf(ce.host), Node: name}
		}
	}
}

// Rewrite writes a remote prefix of Wanted again (reconcile found it
// missing or different in the kernel).
func (r *Router) Rewrite(p netip.Prefix) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rewrite(p)
}

// GiveBack writes p's entry as Rewrite does, or deletes p when the router
// has none (a policy's CIDR entry given back to the cluster).
func (r *Router) GiveBack(p netip.Prefix) {
	r.mu.Lock()
	defer r.mu.Unlock()
	defer r.refill() // before the unlock: a remote key that went frees a place
	had := r.rewrite(p)
	// The router's entry past the remote share (refused): the policy's
	// entry goes all the same (the address resolves as if neither had
	// one), and the router's is written when there is room.
	if _, refused := r.remoteRefused[keyOf(p)]; !had || refused {
		r.dp.DeleteIPCache(p)
		if !had {
			r.putLocal(p)
		}
	}
}

// rewrite writes p's entry, if the router has one, and tells whether it
// had. r.mu is held.
func (r *Router) rewrite(p netip.Prefix) bool {
	if r.sp != nil {
		for name, cs := range r.sp.covers {
			if slices.Contains(cs, p) {
				r.putRemote(p, func() error {
					return r.dp.UpsertIPCacheCover(p, sparse.Cover(r.sp.clusterID[clusterOf(name)]), r.tunnelOf(r.nodes[name].IP()))
				})
				return true
			}
		}
		if _, ce, ok := r.compactOwner(p.Addr()); ok && p.Bits() == 32 && r.sp.installed[p.Addr()] {
			r.putRemote(p, func() error { return r.dp.UpsertIPCacheTunnel(p, ce.id, r.tunnelOf(addrOf(ce.host))) })
			return true
		}
	}
	if e, ok := r.entries[p.Addr()]; ok && p.Bits() == 32 && r.entryOK(e) && !r.down[e.Node] {
		r.writeEntry(e)
		return true
	}
	return false
}

// Stats counts the remote entries: held compactly, written as /32s of
// those, covers written, and entries held in full.
func (r *Router) Stats() (compact, installed, covers, full int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sp != nil {
		for _, m := range r.sp.compact {
			compact += len(m)
		}
		installed = len(r.sp.installed)
		for _, cs := range r.sp.covers {
			covers += len(cs)
		}
	}
	return compact, installed, covers, len(r.entries)
}
