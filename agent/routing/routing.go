// Package routing owns how pod traffic reaches other nodes: in tunnel mode
// the VXLAN device (external mode, UDP 8472) that the programs encapsulate
// into, with the source identity as VNI; in native mode kernel routes to
// each remote pod CIDR through the peer's underlay address; with encryption,
// routes to each peer's pod CIDRs through the WireGuard device. It follows the
// node registry and the cluster ipcache and writes the datapath's remote
// ipcache entries and known-node addresses.
package routing

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/filament-net/filament/agent/datapath"
	"github.com/filament-net/filament/agent/endpoint/veth"
	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/crypto/wireguard"
)

// Modes.
const (
	Tunnel = "tunnel"
	Native = "native"
)

// VXLANDevice is the tunnel device; VXLANPort its UDP port.
const (
	VXLANDevice = "filament_vxlan"
	VXLANPort   = 8472
	// VXLANOverhead is what encapsulation adds to a packet (outer IPv4, UDP, VXLAN, inner Ethernet).
	VXLANOverhead = 50
)

// Encryption is the node's WireGuard device as the router uses it: every
// other node with a WireGuard key becomes a peer whose pod CIDRs are routed
// through the device.
type Encryption interface {
	SetPeer(p wireguard.Peer) error
	RemovePeer(name string) error
	IfIndex() int
	Port() int
}

// IPsec installs the XFRM states and policies toward a peer node; pod
// traffic to it is then routed natively and transformed by the kernel.
type IPsec interface {
	AddPeer(n node.Node, ip netip.Addr) error
	RemovePeer(n node.Node, ip netip.Addr)
}

// ErrMode: an unknown routing mode.
var ErrMode = errors.New("routing mode must be tunnel or native")

// Maps are the datapath maps the router writes (agent/datapath; a fake in
// tests).
type Maps interface {
	UpsertNode(ip netip.Addr, ofCluster bool, remoteCluster uint32) error
	DeleteNode(ip netip.Addr) error
	UpsertEncryptPeer(ip netip.Addr) error
	DeleteEncryptPeer(ip netip.Addr)
	UpsertIPCacheTunnel(p netip.Prefix, id identity.NumericIdentity, tunnel netip.Addr) error
	UpsertIPCacheCover(p netip.Prefix, id identity.NumericIdentity, tunnel netip.Addr) error
	DeleteIPCache(p netip.Prefix) error
	// The nodes' other addresses (localaddrs.go).
	UpsertNodeLocalAddr(ip netip.Addr) error
	DeleteNodeLocalAddr(ip netip.Addr) error
	NodeLocalAddrs() (map[netip.Addr]bool, error)
}

// Router keeps routes, the tunnel and remote ipcache entries current.
type Router struct {
	dp   Maps
	mode string
	self string

	// retired is told of each pod whose address an accepted change took
	// from it (OnRetired).
	retired func(old ipcache.Entry)

	// remoteNodeIPs are the remote clusters' node addresses written to
	// the nodes map, at most maxRemoteNodes (MaxRemoteNodeEntries); past
	// it a remote node is not written (logged once: remoteNodesFull).
	remoteNodeIPs   map[netip.Addr]bool
	maxRemoteNodes  int
	remoteNodesFull bool

	// leftFallbacks are the pod CIDRs whose unreachable routes forgetNode
	// left (with encryption), read from the kernel once (an earlier
	// agent's too) and then kept here: clearFallbacksInside looks them up
	// without a route dump per node learned.
	leftFallbacks     map[netip.Prefix]bool
	leftFallbacksRead bool

	// remoteKeys are the ipcache keys written for remote clusters'
	// entries (their /32s and covers), at most maxRemoteIPCache
	// (MaxRemoteIPCacheEntries when 0); past it a key is refused
	// (remoteRefusals, logged once: remoteIPCacheFull) and kept in
	// remoteRefused, written when a remote key goes (ipcachebudget.go).
	remoteKeys        map[ipcKey]struct{}
	remoteRefused     map[ipcKey]struct{}
	maxRemoteIPCache  int
	remoteRefusals    uint64
	remoteIPCacheFull bool

	enc Encryption
	// encSrc is the source of the node's own traffic through enc.
	encSrc netip.Addr
	xfrm   IPsec
	// requireNode: remote ipcache entries are written only for nodes the
	// router accepted (authenticated), so a refused node cannot claim
	// identities for addresses.
	requireNode bool

	mu        sync.Mutex
	nodes     map[string]node.Node
	local     localAddrs      // the nodes' other addresses (localaddrs.go)
	down      map[string]bool // nodes failure detection declared dead
	hostSrc   netip.Addr      // source of the node's own traffic to other nodes' pods (tunnel mode)
	hostDev   int             // the gateway device those routes go out of (tunnel mode)
	entries   map[netip.Addr]ipcache.Entry
	held      map[string]map[netip.Addr]struct{} // entries' addresses by node (hold and drop keep both)
	sp        *sparseState                       // nil: every remote entry is written as its /32 (--remote-ipcache full)
	own       netip.Prefix                       // this node's pod CIDR: its pods' entries are the engine's
	pool      netip.Prefix                       // this cluster's pool (when pod CIDRs come from it): no remote pod CIDR in it
	poolLocal bool                               // local nodes' pod CIDRs must lie in pool
	ranges    []netip.Prefix                     // where remote pod CIDRs may lie (none set: anywhere)
	// pinned: named remotes' own ranges; rangesSet: ranges or pins set
	// (SetRemotePodRanges).
	pinned    map[string][]netip.Prefix
	rangesSet bool
	claims    claimIndex // the known nodes' addresses and pod CIDRs
	// refused: remote node records refused for meeting another cluster's
	// claims, tried again when claims they met go (refusedIdx: theirs).
	refused    map[string]node.Node
	refusedIdx claimIndex
	// changed: remote clusters whose taken nodes' addresses or pod CIDRs
	// changed since TakeChangedClusters last asked.
	changed map[string]bool
}

// SetOwnPodCIDR gives the router this node's pod CIDR: no other node's or
// cluster's entry may claim an address in it (its pods' entries are the
// policy engine's).
func (r *Router) SetOwnPodCIDR(p netip.Prefix) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.own = p
}

// SetOwnPool gives the router the range this node's pod CIDR was
// allocated from: no remote node's pod CIDR may overlap it, and, when
// local, every node of this cluster's must lie in it (not in Kubernetes
// mode, where a node takes the pool only when its Node object has no pod
// CIDR, and the others' Node objects say theirs).
func (r *Router) SetOwnPool(p netip.Prefix, local bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pool, r.poolLocal = p, local
}

// SetRemotePodRanges sets where remote clusters' pod CIDRs may lie: a
// remote node record with a pod CIDR outside every range is refused.
// Pinned are ranges of named remote clusters: such a cluster's pod CIDRs
// must lie in its own, and no other remote's may meet them (ranges is
// then for the clusters not named; nil with pins: none). With neither,
// remote pod CIDRs may lie anywhere.
func (r *Router) SetRemotePodRanges(ranges []netip.Prefix, pinned map[string][]netip.Prefix) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ranges = slices.Clone(ranges)
	r.pinned = maps.Clone(pinned)
	r.rangesSet = len(ranges) > 0 || len(pinned) > 0
}

// outsideRanges says why a pod CIDR p of remote cluster c lies where it
// may not ("" if it may): outside c's pinned ranges, or, for a cluster
// without pins, outside the ranges or meeting another cluster's pins.
func (r *Router) outsideRanges(c string, p netip.Prefix) string {
	if !r.rangesSet {
		return ""
	}
	if pins, ok := r.pinned[c]; ok {
		if !inRanges(p, pins) {
			return fmt.Sprintf("pod CIDR %s is outside cluster %s's pinned ranges %v (--clustermesh-pod-ranges)", p, c, pins)
		}
		return ""
	}
	if !inRanges(p, r.ranges) {
		return fmt.Sprintf("pod CIDR %s is outside the ranges remote pods may have (--clustermesh-pod-ranges %v)", p, r.ranges)
	}
	for other, pins := range r.pinned {
		for _, q := range pins {
			if q.Overlaps(p) {
				return fmt.Sprintf("pod CIDR %s meets cluster %s's pinned range %s", p, other, q)
			}
		}
	}
	return ""
}

// inRanges says whether p lies inside one of ranges.
func inRanges(p netip.Prefix, ranges []netip.Prefix) bool {
	return slices.ContainsFunc(ranges, func(q netip.Prefix) bool { return q.Bits() <= p.Bits() && q.Contains(p.Addr()) })
}

// hold keeps e as the entry of its address, indexed by its node (a node's
// change looks at its own entries, not at every entry: at a mesh's sync,
// when entries come before their nodes, that was entries × nodes).
func (r *Router) hold(e ipcache.Entry) {
	if old, ok := r.entries[e.IP]; ok && old.Node != e.Node {
		r.unindex(old)
	}
	r.entries[e.IP] = e
	if r.held == nil {
		r.held = map[string]map[netip.Addr]struct{}{}
	}
	m := r.held[e.Node]
	if m == nil {
		m = map[netip.Addr]struct{}{}
		r.held[e.Node] = m
	}
	m[e.IP] = struct{}{}
}

// drop forgets the entry held for ip, if any.
func (r *Router) drop(ip netip.Addr) {
	if old, ok := r.entries[ip]; ok {
		delete(r.entries, ip)
		r.unindex(old)
	}
}

func (r *Router) unindex(e ipcache.Entry) {
	if m := r.held[e.Node]; m != nil {
		delete(m, e.IP)
		if len(m) == 0 {
			delete(r.held, e.Node)
		}
	}
}

// heldOf calls f for each entry held of node name (f may drop it).
func (r *Router) heldOf(name string, f func(ipcache.Entry)) {
	for ip := range r.held[name] {
		if e, ok := r.entries[ip]; ok {
			f(e)
		}
	}
}

// New prepares the node for mode: the VXLAN device and from_overlay in
// tunnel mode (removed in native mode).
func New(dp *datapath.Datapath, mode, self string) (*Router, error) {
	r := newRouter(dp, mode, self)
	switch mode {
	case Tunnel:
		idx, err := ensureVXLAN()
		if err != nil {
			return nil, err
		}
		if _, err := dp.AttachOverlay(VXLANDevice, idx); err != nil {
			return nil, err
		}
		if r.hostDev, err = hostRoutes(dp); err != nil {
			return nil, err
		}
		if err := dp.SetTunnel(idx); err != nil {
			return nil, err
		}
	case Native:
		if l, err := netlink.LinkByName(VXLANDevice); err == nil {
			netlink.LinkDel(l)
		}
		dp.Detach(VXLANDevice)
		if err := dp.SetTunnel(0); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("%w: got %q", ErrMode, mode)
	}
	return r, nil
}

func newRouter(dp Maps, mode, self string) *Router {
	return &Router{dp: dp, mode: mode, self: self, nodes: map[string]node.Node{}, down: map[string]bool{}, entries: map[netip.Addr]ipcache.Entry{},
		remoteNodeIPs: map[netip.Addr]bool{}, maxRemoteNodes: MaxRemoteNodeEntries}
}

// MaxRemoteNodeEntries bounds the nodes map entries (65,536 per node)
// remote clusters' nodes hold together: three quarters, so the rest stays
// for this cluster's nodes whatever the remotes publish. Until 2026-12-05
// the map held 16,384, exactly one remote's bound (clustermesh.MaxRemoteNodes):
// one remote could fill it, and a new local node's tunnel traffic was
// dropped (TestRemoteNodesLeaveRoomForLocalOnes).
const MaxRemoteNodeEntries = 49152

// writeNode writes n's address ip to the nodes map, unless n is a remote
// cluster's and the remote nodes hold their bound.
func (r *Router) writeNode(n node.Node, ip netip.Addr) {
	if clusterOf(n.Name) != "" && !r.remoteNodeIPs[ip] {
		if len(r.remoteNodeIPs) >= r.maxRemoteNodes {
			if !r.remoteNodesFull {
				r.remoteNodesFull = true
				slog.Error("nodes map: remote clusters' nodes hold their share; a remote node is not written (its tunnelled traffic is dropped), logged once", "node", n.Name, "max", r.maxRemoteNodes)
			}
			return
		}
		r.remoteNodeIPs[ip] = true
	}
	// A remote cluster's node may send only its cluster's identities as
	// a VNI (its ID is the one its remote claimed: clustermesh/remote,
	// which always sets it; without one the node's VNIs are unbounded).
	remote := clusterOf(n.Name) != ""
	if remote && n.ClusterID == 0 {
		slog.Warn("nodes map: a remote cluster's node without its cluster ID; its VNIs are not bounded to its cluster", "node", n.Name)
	}
	if err := r.dp.UpsertNode(ip, !remote, n.ClusterID); err != nil {
		slog.Error("nodes map", "node", n.Name, "err", err)
	}
}

// SetHostSource makes addr (the node's underlay address) the source of
// the node's own traffic to other nodes' pods in tunnel mode, so that their
// replies come back over the underlay to an address every node routes (call
// before nodes are learned).
func (r *Router) SetHostSource(addr netip.Addr) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hostSrc = addr
}

// hostRoutes readies the way of the node's own traffic to other nodes'
// pods in tunnel mode: routed out of the gateway device (no ARP: its frames
// need no next-hop address) into its peer, where from_host encapsulates it.
// It returns the gateway device's index.
func hostRoutes(dp *datapath.Datapath) (int, error) {
	gw, err := netlink.LinkByName(veth.HostDevice)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", veth.HostDevice, err)
	}
	if err := netlink.LinkSetARPOff(gw); err != nil {
		return 0, fmt.Errorf("%s: arp off: %w", veth.HostDevice, err)
	}
	peer, err := netlink.LinkByName(veth.HostPeer)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", veth.HostPeer, err)
	}
	_, err = dp.AttachHost(veth.HostPeer, peer.Attrs().Index)
	return gw.Attrs().Index, err
}

func ensureVXLAN() (int, error) {
	if l, err := netlink.LinkByName(VXLANDevice); err == nil {
		if v, ok := l.(*netlink.Vxlan); ok && v.FlowBased && v.Port == VXLANPort {
			return l.Attrs().Index, netlink.LinkSetUp(l)
		}
		netlink.LinkDel(l)
	}
	v := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: VXLANDevice, MTU: 1500}, FlowBased: true, Port: VXLANPort, Learning: false}
	if err := netlink.LinkAdd(v); err != nil && !errors.Is(err, unix.EEXIST) {
		return 0, fmt.Errorf("create %s (VXLAN, external): %w", VXLANDevice, err)
	}
	l, err := netlink.LinkByName(VXLANDevice)
	if err != nil {
		return 0, err
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return 0, fmt.Errorf("%s up: %w", VXLANDevice, err)
	}
	return l.Attrs().Index, nil
}

// PodMTU is the MTU pods get on an underlay of underlayMTU in mode, less
// WireGuard's overhead when traffic is encrypted.
func PodMTU(mode string, underlayMTU int, encrypted bool) int {
	if encrypted {
		return underlayMTU - wireguard.Overhead
	}
	if mode == Tunnel {
		return underlayMTU - VXLANOverhead
	}
	return underlayMTU
}

// RequireNodes writes a remote ipcache entry only once its node is known
// (nodes are authenticated before the router sees them).
func (r *Router) RequireNodes() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requireNode = true
}

// SetIPsec makes every node an IPsec peer through x (native routing; call
// before nodes are learned).
func (r *Router) SetIPsec(x IPsec) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.xfrm = x
}

// SetEncryption routes pod traffic to other nodes through e (call before
// nodes are learned). src, this node's gateway address (inside its pod
// CIDR), is the source of the node's own traffic through the device: a
// peer accepts it (it is in this node's allowed IPs there) and routes the
// replies back through the tunnel, so host-to-remote-pod traffic is
// encrypted both ways.
func (r *Router) SetEncryption(e Encryption, src netip.Addr) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.enc = e
	r.encSrc = src
}

func cidrs(n node.Node) []netip.Prefix {
	var out []netip.Prefix
	for _, c := range n.PodCIDRs {
		if p, err := netip.ParsePrefix(c); err == nil {
			out = append(out, p)
		}
	}
	return out
}

func ipnet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}
}

// encryptFallbackMetric is the metric of the unreachable route each
// WireGuard peer's pod CIDR also gets, below the device's route (metric
// 0): when the device goes (its process died), the kernel removes the
// routes through it and this one drops the traffic, which would otherwise
// follow another route out unencrypted.
const encryptFallbackMetric = 4242

func encryptFallback(c netip.Prefix) *netlink.Route {
	return &netlink.Route{Dst: ipnet(c), Type: unix.RTN_UNREACHABLE, Priority: encryptFallbackMetric}
}

// clearFallbacksInside removes the unreachable routes forgetNode left
// for pod CIDRs strictly inside c that no node holds now: the kernel takes
// the longest prefix whatever the metric, so one left for a /24 kept
// a /23 given out later unreachable (TestForgottenFallbackGivesWayToAWiderCIDR).
func (r *Router) clearFallbacksInside(c netip.Prefix) {
	if !r.leftFallbacksRead {
		r.leftFallbacksRead = true
		if r.leftFallbacks == nil {
			r.leftFallbacks = map[netip.Prefix]bool{}
		}
		rs, _ := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Type: unix.RTN_UNREACHABLE, Priority: encryptFallbackMetric},
			netlink.RT_FILTER_TYPE|netlink.RT_FILTER_PRIORITY)
		for _, rt := range rs {
			if rt.Dst == nil {
				continue
			}
			if a, ok := netip.AddrFromSlice(rt.Dst.IP.To4()); ok {
				bits, _ := rt.Dst.Mask.Size()
				r.leftFallbacks[netip.PrefixFrom(a, bits)] = true
			}
		}
	}
	for p := range r.leftFallbacks {
		if p.Bits() <= c.Bits() || !c.Contains(p.Addr()) {
			continue
		}
		if len(r.claims.cidrs[p]) == 0 {
			netlink.RouteDel(encryptFallback(p))
		}
		delete(r.leftFallbacks, p) // held by a node: its own route now
	}
}

// encryptTo makes n a WireGuard peer: its pod CIDRs are its allowed IPs
// and are routed through the device; the programs send its pods' traffic
// there. A node without a key is not a peer (strict mode drops traffic to it).
func (r *Router) encryptTo(n node.Node, ip netip.Addr) bool {
	key, err := wgtypes.ParseKey(n.WireGuardKey)
	if n.WireGuardKey == "" || err != nil {
		r.enc.RemovePeer(n.Name)
		r.dp.DeleteEncryptPeer(ip)
		if n.WireGuardKey != "" {
			slog.Warn("node has an invalid WireGuard key; not a peer", "node", n.Name, "err", err)
		}
		return false
	}
	p := wireguard.Peer{Name: n.Name, PublicKey: key, Endpoint: netip.AddrPortFrom(ip, uint16(r.enc.Port())), AllowedIPs: cidrs(n)}
	if err := r.enc.SetPeer(p); err != nil {
		slog.Error("wireguard peer", "node", n.Name, "err", err)
		return false
	}
	for _, c := range p.AllowedIPs {
		rt := &netlink.Route{Dst: ipnet(c), LinkIndex: r.enc.IfIndex(), Scope: netlink.SCOPE_LINK}
		if r.encSrc.IsValid() {
			rt.Src = r.encSrc.AsSlice()
		}
		if err := netlink.RouteReplace(rt); err != nil {
			slog.Error("route to a remote pod CIDR through WireGuard", "node", n.Name, "cidr", c, "err", err)
		}
		if err := netlink.RouteReplace(encryptFallback(c)); err != nil {
			slog.Error("unreachable fallback route to a remote pod CIDR", "node", n.Name, "cidr", c, "err", err)
		}
	}
	if err := r.dp.UpsertEncryptPeer(ip); err != nil {
		slog.Error("encrypt peers map", "node", n.Name, "err", err)
	}
	return true
}

// Mode is the routing mode.
func (r *Router) Mode() string { return r.mode }

// NodeChanged follows the registry.
func (r *Router) NodeChanged(n node.Node, deleted bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	defer r.refill() // before the unlock: a remote key that went frees a place
	if n.Name == r.self {
		return
	}
	r.retryRefused(r.nodeChanged(n, deleted))
}

// nodeChanged applies a node's record or delete; it returns the records
// whose claims were given up (the node's old record, remote nodes a node
// of this cluster evicted).
func (r *Router) nodeChanged(n node.Node, deleted bool) []node.Node {
	var released []node.Node
	// A refused record replaced or deleted gives up its claims too: the
	// refused records of its cluster it held off are tried again.
	if old, ok := r.refused[n.Name]; ok && clusterOf(n.Name) != "" {
		released = append(released, old)
	}
	switch {
	case deleted:
		r.unrefuse(n.Name)
	case r.refuseClaims(n):
		// Nodes of one remote cluster claiming the same: neither is
		// taken while both claim it (fail closed), whichever came first
		// (TestRemoteNodeCannotTakeItsNeighbours). Only for a record kept
		// to be tried again, whose delete or change gives the others
		// back: one refused for good (outside its ranges, say) evicts
		// nothing (TestRemoteNodeRefusedForGoodEvictsNothing).
		if _, kept := r.refused[n.Name]; kept && clusterOf(n.Name) != "" {
			c := clusterOf(n.Name)
			var evict []string
			r.claims.meets(n, func(name, _ string) bool {
				if clusterOf(name) == c && !slices.Contains(evict, name) {
					evict = append(evict, name)
				}
				return true
			})
			for _, name := range evict {
				slog.Warn("a remote cluster's node refused: another node of its cluster claims what it holds", "node", name, "by", n.Name)
				released = append(released, r.evict(name))
			}
		}
		return released
	case clusterOf(n.Name) == "":
		// A node of this cluster takes back what remote nodes claimed of
		// its own.
		var evict []string
		r.claims.meets(n, func(name, what string) bool {
			if clusterOf(name) != "" && !slices.Contains(evict, name) {
				slog.Warn("a remote cluster's node gave way to a node of this cluster", "node", name, "to", n.Name, "shared", what)
				evict = append(evict, name)
			}
			return true
		})
		for _, name := range evict {
			released = append(released, r.evict(name))
		}
	}
	old, had := r.nodes[n.Name]
	if had && !deleted && old.IP() == n.IP() && slices.Equal(old.PodCIDRs, n.PodCIDRs) {
		// Same addresses and pod CIDRs, other bytes (a rotated key, a new
		// signature, labels): update in place, so its traffic is never
		// without an entry, a route or a peer (learnNode's writes all
		// replace; IPsec's states and policies depend on the addresses
		// only), and its covers and compact entries stay. A rotated key
		// moves its claim, and what met the old key may be taken.
		r.nodes[n.Name] = n
		r.setLocalAddrs(n.Name, &n)
		if wgKey(old) != wgKey(n) {
			r.claims.remove(old)
			r.claims.add(n)
			released = append(released, old)
		}
		if !r.down[n.Name] {
			r.learnNode(n)
		}
		return released
	}
	if c := clusterOf(n.Name); c != "" && (had || !deleted) {
		r.markChanged(c)
	}
	var others []string
	if had {
		others = r.sparseForget(old)
		// A replaced record's entries stay written while the new one is
		// learned (those it may no longer have go after).
		r.forgetNode(old, deleted)
		r.claims.remove(old)
		r.relearnSharers(old)
		released = append(released, old)
	}
	if deleted {
		delete(r.nodes, n.Name)
		r.setLocalAddrs(n.Name, nil)
		r.syncNodes(others)
		return released
	}
	r.nodes[n.Name] = n
	r.claims.add(n)
	r.setLocalAddrs(n.Name, &n)
	others = append(others, r.sparseLearn(n)...)
	if !r.down[n.Name] {
		r.learnNode(n)
	}
	if had {
		// Those the new record no longer allows, if the old one did
		// (written then).
		r.heldOf(n.Name, func(e ipcache.Entry) {
			if !r.entryOK(e) && InPodCIDRs(e.IP, old) && !r.down[n.Name] {
				r.deleteIPCache(netip.PrefixFrom(e.IP, 32))
			}
		})
	}
	r.syncNodes(others)
	return released
}

// evict forgets remote node name for a node of this cluster that claims
// what it held, and returns its record, kept as refused (unless a newer
// record of it is refused already).
func (r *Router) evict(name string) node.Node {
	old := r.nodes[name]
	r.markChanged(clusterOf(name))
	others := r.sparseForget(old)
	r.forgetNode(old, true)
	r.claims.remove(old)
	r.relearnSharers(old)
	delete(r.nodes, name)
	r.setLocalAddrs(name, nil)
	if _, newer := r.refused[name]; !newer {
		r.refuse(old)
	}
	r.syncNodes(others)
	return old
}

func (r *Router) markChanged(cluster string) {
	if r.changed == nil {
		r.changed = map[string]bool{}
	}
	r.changed[cluster] = true
}

// TakeChangedClusters returns the remote clusters whose taken nodes'
// addresses or pod CIDRs changed since it was last called (so what
// Owns says of them may have), and forgets them.
func (r *Router) TakeChangedClusters() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := slices.Sorted(maps.Keys(r.changed))
	r.changed = nil
	return out
}

// relearnSharers learns again the nodes holding the same pod CIDR or
// address as old, which just went: its routes and known-node address
// were theirs too (should two taken nodes ever share one: every record
// meeting a taken node is refused, a remote one of its cluster too since
// 2026-12-07).
func (r *Router) relearnSharers(old node.Node) {
	var names []string
	add := func(held map[string]bool) {
		for name := range held {
			if !slices.Contains(names, name) {
				names = append(names, name)
			}
		}
	}
	if ip := old.IP(); ip.IsValid() {
		add(r.claims.addrs[ip])
	}
	for _, c := range cidrs(old) {
		add(r.claims.cidrs[c.Masked()])
	}
	slices.Sort(names)
	for _, name := range names {
		if n, ok := r.nodes[name]; ok && !r.down[name] {
			r.learnNode(n)
		}
	}
}

// refuse keeps n's record as refused for meeting another node;
// unrefuse forgets name's.
func (r *Router) refuse(n node.Node) {
	if r.refused == nil {
		r.refused = map[string]node.Node{}
	}
	r.refused[n.Name] = n
	r.refusedIdx.add(n)
}

func (r *Router) unrefuse(name string) {
	if n, ok := r.refused[name]; ok {
		r.refusedIdx.remove(n)
		delete(r.refused, name)
	}
}

// retryRefused takes the refused records that met what released gave up
// and no longer meet another cluster's claims (in name order; what a
// taken record gives up is looked at in turn). Only those records are
// looked at, through their own claim index: a remote changing its nodes
// does not make every refused record be tried again.
func (r *Router) retryRefused(released []node.Node) {
	for len(released) > 0 && len(r.refused) > 0 {
		rel := released[0]
		released = released[1:]
		var names []string
		r.refusedIdx.meets(rel, func(name, _ string) bool {
			if !slices.Contains(names, name) {
				names = append(names, name)
			}
			return true
		})
		slices.Sort(names)
		for _, name := range names {
			n, ok := r.refused[name]
			if !ok {
				continue
			}
			if why, _ := r.claimsOthers(n); why == "" {
				released = append(released, r.nodeChanged(n, false)...)
			}
		}
	}
}

// refuseClaims refuses n if it claims what is not its own (claimsOthers):
// refused whole; one meeting another node is kept to be tried again when
// what it met goes. One it had stays as it was until a record it may have
// comes (or its delete).
func (r *Router) refuseClaims(n node.Node) bool {
	why, retry := r.claimsOthers(n)
	r.unrefuse(n.Name)
	if why == "" {
		return false
	}
	if clusterOf(n.Name) != "" {
		slog.Warn("refused a remote cluster's node record", "node", n.Name, "why", why)
	} else {
		slog.Warn("refused a node record of this cluster", "node", n.Name, "why", why)
	}
	if retry {
		r.refuse(n)
	}
	return true
}

// meetsThisNode says why pod CIDR p of another node is this node's ("" if
// it is not): it overlaps this node's pod CIDR or holds its address.
func (r *Router) meetsThisNode(p netip.Prefix) string {
	if r.own.IsValid() && r.own.Overlaps(p) {
		return fmt.Sprintf("pod CIDR %s overlaps this node's %s", p, r.own)
	}
	if r.hostSrc.IsValid() && p.Contains(r.hostSrc) {
		return fmt.Sprintf("pod CIDR %s holds this node's address", p)
	}
	return ""
}

// localClaimsOthers says why a node record of this cluster claims what is
// not its own ("" if it does not), and whether it may be tried again when
// other nodes' claims go: this node's address, a pod CIDR meeting this
// node's, holding its address or outside this cluster's pool (when pod
// CIDRs come from it), or the address, a pod CIDR or the WireGuard key of
// another node of this cluster (remote nodes give way to it). Every
// record is signed by its node, which proves whose it is, not that what
// it claims is its own: until 2026-12-04 a node of this cluster could
// claim another node's pods, this node's, or 0.0.0.0/0, and every node
// routed and encrypted that traffic to it.
func (r *Router) localClaimsOthers(n node.Node) (why string, retry bool) {
	if ip := n.IP(); ip.IsValid() && ip == r.hostSrc {
		return fmt.Sprintf("address %s is this node's", ip), false
	}
	for _, p := range cidrs(n) {
		if why := r.meetsThisNode(p); why != "" {
			return why, false
		}
		if r.pool.IsValid() && r.poolLocal && (p.Bits() < r.pool.Bits() || !r.pool.Contains(p.Addr())) {
			return fmt.Sprintf("pod CIDR %s is outside this cluster's pool %s", p, r.pool), false
		}
	}
	r.claims.meets(n, func(name, what string) bool {
		if clusterOf(name) != "" {
			return true
		}
		why = fmt.Sprintf("%s is node %s's", what, name)
		return false
	})
	return why, why != ""
}

// claimsOthers says why a remote cluster's node record claims what is
// not its own ("" if it does not), and whether it may be tried again when
// other nodes' claims go: it meets the address, a pod CIDR or the
// WireGuard key of another node (of this cluster, a third, or its own),
// either way round (an address in a pod CIDR too). A record's pod CIDRs are routed to and become its
// WireGuard allowed IPs, its address a known node's: until 2026-12-04 a
// remote could claim other nodes' pods, and its delete removed a local
// node's address from the known nodes. Its pod CIDRs must also lie
// outside this node's pod CIDR and this cluster's pool and inside the
// ranges remote pods may have (a prefix meeting no node, as wide as
// 0.0.0.0/1, was taken before: routed to the remote, with this node's
// own traffic to it), and hold not this node's address.
func (r *Router) claimsOthers(n node.Node) (why string, retry bool) {
	c := clusterOf(n.Name)
	if c == "" {
		return r.localClaimsOthers(n)
	}
	if !n.IP().Is4() {
		// Never routed to, while its claims would hold other clusters'
		// records off.
		return "no IPv4 address", false
	}
	if ip := n.IP(); ip == r.hostSrc {
		return fmt.Sprintf("address %s is this node's", ip), false
	}
	for other, pins := range r.pinned {
		// An address in another remote's pins would meet its pod CIDRs
		// and hold them off (claims.meets).
		if other != c && inRanges(netip.PrefixFrom(n.IP(), 32), pins) {
			return fmt.Sprintf("address %s is in cluster %s's pinned ranges %v", n.IP(), other, pins), false
		}
	}
	for _, p := range cidrs(n) {
		if why := r.meetsThisNode(p); why != "" {
			return why, false
		}
		if r.pool.IsValid() && r.pool.Overlaps(p) {
			return fmt.Sprintf("pod CIDR %s overlaps this cluster's pool %s", p, r.pool), false
		}
		if why := r.outsideRanges(c, p); why != "" {
			return why, false
		}
	}
	// Nodes of its own cluster too, taken or refused for meeting it (so
	// two claiming the same both stay refused, whichever came first):
	// until 2026-12-07 they could overlap, and with WireGuard a node
	// listing its neighbour's pod CIDR became this cluster's peer for it
	// (TestRemoteNodeCannotTakeItsNeighbours).
	r.claims.meets(n, func(name, what string) bool {
		why = fmt.Sprintf("%s is node %s's", what, name)
		return false
	})
	if why == "" {
		r.refusedIdx.meets(n, func(name, what string) bool {
			if clusterOf(name) != c {
				return true
			}
			why = fmt.Sprintf("%s is claimed by node %s of its cluster too", what, name)
			return false
		})
	}
	return why, why != ""
}

func (r *Router) learnNode(n node.Node) {
	ip := n.IP()
	if !ip.IsValid() {
		return
	}
	r.writeNode(n, ip)
	r.heldOf(n.Name, func(e ipcache.Entry) {
		if r.entryOK(e) {
			r.writeEntry(e)
		}
	})
	for _, c := range cidrs(n) {
		r.clearFallbacksInside(c.Masked())
	}
	if r.enc != nil && r.encryptTo(n, ip) {
		return
	}
	if r.xfrm != nil {
		if err := r.xfrm.AddPeer(n, ip); err != nil {
			slog.Error("ipsec peer", "node", n.Name, "err", err)
			r.dp.DeleteEncryptPeer(ip)
		} else if err := r.dp.UpsertEncryptPeer(ip); err != nil {
			slog.Error("encrypt peers map", "node", n.Name, "err", err)
		}
	}
	if r.mode == Native {
		for _, c := range n.PodCIDRs {
			p, err := netip.ParsePrefix(c)
			if err != nil {
				continue
			}
			rt := &netlink.Route{Dst: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}, Gw: ip.AsSlice()}
			if err := netlink.RouteReplace(rt); err != nil {
				slog.Error("route to a remote pod CIDR", "node", n.Name, "cidr", c, "via", ip, "err", err)
			}
		}
	}
	if r.mode == Tunnel {
		// The node's own traffic (the L7 proxy's among it) to the node's
		// pods: out of the gateway device, encapsulated by from_host.
		for _, c := range cidrs(n) {
			rt := &netlink.Route{Dst: ipnet(c), LinkIndex: r.hostDev, Scope: netlink.SCOPE_LINK}
			if r.hostSrc.IsValid() {
				rt.Src = r.hostSrc.AsSlice()
			}
			if err := netlink.RouteReplace(rt); err != nil {
				slog.Error("route to a remote pod CIDR", "node", n.Name, "cidr", c, "dev", veth.HostDevice, "err", err)
			}
		}
	}
}

// forgetNode undoes learnNode for n's record (and, with entries, withdraws
// its entries where they need it known). What another node holds too
// (the same address or pod CIDR, should two taken nodes share one) is
// left to relearnSharers.
func (r *Router) forgetNode(n node.Node, entries bool) {
	if entries && (r.requireNode || clusterOf(n.Name) != "") && !r.down[n.Name] {
		// Only those written (n's record is still r.nodes'): a refused
		// one's address may hold another writer's /32.
		r.heldOf(n.Name, func(e ipcache.Entry) {
			if r.entryOK(e) {
				r.deleteIPCache(netip.PrefixFrom(e.IP, 32))
			}
		})
	}
	shared := func(names map[string]bool) bool {
		for name := range names {
			if name != n.Name {
				return true
			}
		}
		return false
	}
	if ip := n.IP(); ip.IsValid() {
		if r.enc != nil {
			r.enc.RemovePeer(n.Name)
		}
		if r.xfrm != nil {
			r.xfrm.RemovePeer(n, ip)
		}
		if !shared(r.claims.addrs[ip]) {
			r.dp.DeleteNode(ip)
			delete(r.remoteNodeIPs, ip)
			if r.enc != nil || r.xfrm != nil {
				r.dp.DeleteEncryptPeer(ip)
			}
		}
	}
	// Its pod CIDRs' routes, whichever way they went (native, encryption
	// device, or the gateway device in tunnel mode). With encryption an
	// unreachable route stays: without it the CIDR's traffic took the
	// default route out in clear, strict mode included (its entries
	// withdrawn, the programs take its pods for the world's); until
	// 2026-12-07 so with IPsec (TestForgottenIPsecPeerNotRoutedInClear).
	for _, c := range cidrs(n) {
		if shared(r.claims.cidrs[c.Masked()]) {
			continue
		}
		netlink.RouteDel(&netlink.Route{Dst: ipnet(c)})
		if r.enc != nil || r.xfrm != nil {
			if err := netlink.RouteReplace(encryptFallback(c)); err != nil {
				slog.Error("unreachable route to a forgotten peer's pod CIDR", "node", n.Name, "cidr", c, "err", err)
			}
			if r.leftFallbacks == nil {
				r.leftFallbacks = map[netip.Prefix]bool{}
			}
			r.leftFallbacks[c.Masked()] = true
		} else {
			netlink.RouteDel(encryptFallback(c))
		}
	}
}

// EntryChanged follows remote ipcache entries.
func (r *Router) EntryChanged(e ipcache.Entry, deleted bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	defer r.refill() // before the unlock: a remote key that went frees a place
	// The compact store's holder of the address, looked up once (every
	// remote entry comes this way: a mesh's sync is millions).
	owner, _, owned := r.compactOwner(e.IP)
	if !r.mayChange(e, deleted, owner, owned) {
		return
	}
	r.noteRetired(e, deleted, owner, owned)
	if r.sparseEntryChanged(e, deleted, owner, owned) {
		return
	}
	p := netip.PrefixFrom(e.IP, 32)
	// Only a /32 this router wrote is deleted: the address may hold
	// another writer's (this node's host entry, a policy's CIDR
	// identity), which a refused entry never replaced. Until 2026-12-06 a
	// remote's entry of an unknown node at such an address deleted it
	// (TestForeignSlash32sNotDeleted).
	// A compact entry's /32 is written only when installed (and the
	// compact store's own change may have removed it just now).
	wrote := owned && r.sp.installed[e.IP] || r.wrote(e.IP)
	if owned {
		delete(r.sp.installed, e.IP) // the /32 is the full path's from here (deleted below, or written anew)
	}
	if deleted {
		r.drop(e.IP)
		if wrote {
			r.deleteIPCache(p)
		}
		return
	}
	r.hold(e)
	if r.down[e.Node] {
		// Its node's entries are withdrawn: so is the one another node
		// had for the address (until 2026-12-06 it stayed, and counted
		// against the remote share for good).
		if wrote {
			r.deleteIPCache(p)
		}
		return
	}
	if !r.entryOK(e) {
		// Held until its node is accepted (or refused for good: an
		// address outside its node's pod CIDRs); an entry it had is
		// withdrawn.
		if n, known := r.nodes[e.Node]; known {
			slog.Warn("refused an ipcache entry outside its node's pod CIDRs", "ip", e.IP, "node", e.Node, "podCIDRs", n.PodCIDRs)
		}
		if wrote {
			r.deleteIPCache(p)
		}
		return
	}
	r.writeEntry(e)
}

// Held is the entry r holds for ip, another node's (a compact entry
// names no pod), whether or not it may be in the datapath now (its node
// down, or not accepted yet): whose address ip is, as far as r knows.
func (r *Router) Held(ip netip.Addr) (ipcache.Entry, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.entries[ip]; ok {
		return e, true
	}
	if name, _, found := r.compactOwner(ip); found {
		return ipcache.Entry{IP: ip, Node: name}, true
	}
	return ipcache.Entry{}, false
}

// OnRetired has f told, with r's lock held, of the entry of each pod
// whose address a change EntryChanged accepts takes from it: its
// holder's deletion, or an entry naming another pod or node
// (ipcache.Retires; a compact entry names no pod). The agent deletes the
// conntrack entries naming the address (datapath.ScrubPeer).
func (r *Router) OnRetired(f func(old ipcache.Entry)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.retired = f
}

// noteRetired tells r.retired of the pod an accepted change e retires
// (owner: the compact store's holder of the address, if owned).
func (r *Router) noteRetired(e ipcache.Entry, deleted bool, owner string, owned bool) {
	if r.retired == nil {
		return
	}
	old, had := r.entries[e.IP]
	if !had && owned {
		old, had = ipcache.Entry{IP: e.IP, Node: owner}, true
	}
	if had && ipcache.Retires(old, had, e, deleted) {
		r.retired(old)
	}
}

// wrote says whether the datapath holds the entry held for ip, as this
// router wrote it: its node not down and the entry one it may have.
func (r *Router) wrote(ip netip.Addr) bool {
	old, had := r.entries[ip]
	return had && !r.down[old.Node] && r.entryOK(old)
}

// mayChange says whether e (a put, or a delete) may change the entry of
// its address (owner: the compact store's holder, if owned): none in this
// node's pod CIDR; a delete only the node holding it (a node's late delete
// leaves the entry another node of its cluster holds now); a put from a
// remote cluster's node not an address a node of another cluster (this
// one, or a third) holds with an entry it may have. Before 2026-12-04 a
// remote cluster could claim a local pod's address, and remove the local
// entry with its own delete.
func (r *Router) mayChange(e ipcache.Entry, deleted bool, owner string, owned bool) bool {
	if r.own.IsValid() && r.own.Contains(e.IP) {
		if deleted {
			r.drop(e.IP) // forgotten here; the datapath's entry is the engine's
		} else {
			slog.Warn("refused another node's ipcache entry for an address of this node's pod CIDR", "ip", e.IP, "node", e.Node)
		}
		return false
	}
	holder, valid, held := "", true, false
	if old, had := r.entries[e.IP]; had {
		holder, valid, held = old.Node, r.entryOK(old), true
	} else if owned {
		holder, held = owner, true
	}
	switch {
	case !held || holder == e.Node:
		return true
	case deleted:
		return false
	}
	c, hc := clusterOf(e.Node), clusterOf(holder)
	// This cluster's entries are its own to change; another cluster's
	// holder keeps the address unless its entry is one it may not have.
	if c == "" || c == hc || hc != "" && !valid {
		return true
	}
	slog.Warn("refused a remote cluster's ipcache entry for an address another cluster's node holds", "ip", e.IP, "node", e.Node, "holder", holder)
	return false
}

// Owns says whether ip is remote cluster's own: in a pod CIDR of one of
// its nodes the router took, or one of those nodes' addresses.
func (r *Router) Owns(cluster string, ip netip.Addr) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if cluster == "" {
		return false
	}
	ofCluster := func(names map[string]bool) bool {
		for name := range names {
			if clusterOf(name) == cluster {
				return true
			}
		}
		return false
	}
	if ofCluster(r.claims.addrs[ip]) {
		return true
	}
	// around stops (false) at the first pod CIDR holding ip that one of
	// the cluster's nodes claims.
	return !r.claims.around(netip.PrefixFrom(ip, 32), func(names map[string]bool, _ netip.Prefix) bool {
		return !ofCluster(names)
	})
}

// RemoteHolds says whether ip lies in a pod CIDR of a remote cluster's
// node the router took (its entry known or not: the node may be down, or
// the entry not come yet), or in the ranges pinned to a remote cluster
// (--clustermesh-pod-ranges CLUSTER=CIDR, known before the mesh syncs).
func (r *Router) RemoteHolds(ip netip.Addr) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, pins := range r.pinned {
		if inRanges(netip.PrefixFrom(ip, 32), pins) {
			return true
		}
	}
	return !r.claims.around(netip.PrefixFrom(ip, 32), func(names map[string]bool, _ netip.Prefix) bool {
		for name := range names {
			if clusterOf(name) != "" {
				return false
			}
		}
		return true
	})
}

// Taken is the record of node name the router took (vetted), if any: a
// newer record it refused leaves the one it had.
func (r *Router) Taken(name string) (node.Node, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n, ok := r.nodes[name]
	return n, ok
}

// ClusterHolds says whether prefix p is the cluster's: inside this node's
// pod CIDR or a known node's, or a node's address. A policy's CIDR
// identity must not take such a key (or cover a pod there more
// specifically than its cover): the pods' and nodes' entries are their
// identities.
func (r *Router) ClusterHolds(p netip.Prefix) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	p = p.Masked()
	if r.own.IsValid() && r.own.Bits() <= p.Bits() && r.own.Contains(p.Addr()) {
		return true
	}
	if p.Bits() == 32 && (p.Addr() == r.hostSrc || len(r.claims.addrs[p.Addr()]) > 0) {
		return true
	}
	return !r.claims.around(p, func(names map[string]bool, _ netip.Prefix) bool { return len(names) == 0 })
}

// Entry is the accepted ipcache entry of another node's address.
func (r *Router) Entry(ip netip.Addr) (ipcache.Entry, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.entries[ip]
	if !ok {
		// A compact entry has no pod names (docs/architecture.md, sparse
		// remote ipcache).
		if name, ce, found := r.compactOwner(ip); found && !r.down[name] {
			return ipcache.Entry{IP: ip, Identity: ce.id, HostIP: addrOf(ce.host), Node: name}, true
		}
	}
	if !ok || r.down[e.Node] || !r.entryOK(e) {
		return ipcache.Entry{}, false
	}
	return e, true
}

// entryOK says whether a remote entry may be in the datapath: its node is
// known and the address is one of that node's pod addresses (a node, or a
// remote cluster, cannot claim an identity for any other address), or,
// with node authentication off, its node is not known yet.
func (r *Router) entryOK(e ipcache.Entry) bool {
	n, known := r.nodes[e.Node]
	if !known {
		return !r.requireNode && clusterOf(e.Node) == ""
	}
	return InPodCIDRs(e.IP, n)
}

// entryTunnel is the tunnel endpoint and encryption peer of e's traffic:
// its node's address when the node is known (the entry's hostIP only
// when it is not, node authentication off). Until 2026-12-07 the hostIP
// was taken as it came: the entries' writers share the kvstore's
// credentials, and one naming another node's pod with a host that is no
// encryption peer had that pod's traffic sent there as clear VXLAN
// (TestEntryTunnelledOnlyToItsNode).
func (r *Router) entryTunnel(e ipcache.Entry) netip.Addr {
	if n, known := r.nodes[e.Node]; known {
		return n.IP()
	}
	return e.HostIP
}

// InPodCIDRs says whether ip lies in one of n's pod CIDRs.
func InPodCIDRs(ip netip.Addr, n node.Node) bool {
	for _, c := range n.PodCIDRs {
		if p, err := netip.ParsePrefix(c); err == nil && p.Contains(ip) {
			return true
		}
	}
	return false
}

func (r *Router) writeEntry(e ipcache.Entry) {
	// The node of a remote pod: the tunnel endpoint, and the encryption
	// peer its traffic must go to.
	var tunnel netip.Addr
	if r.mode == Tunnel || r.enc != nil || r.xfrm != nil {
		tunnel = r.entryTunnel(e)
	}
	p := netip.PrefixFrom(e.IP, 32)
	write := func() error { return r.dp.UpsertIPCacheTunnel(p, e.Identity, tunnel) }
	var err error
	if clusterOf(e.Node) != "" {
		err = r.putRemote(p, write)
	} else {
		r.putLocal(p)
		err = write()
	}
	if err != nil && !errors.Is(err, errRemoteBudget) {
		slog.Error("remote ipcache entry", "ip", e.IP, "err", err)
	}
}

// SetNodeDown withdraws (down) or restores a node's entries and routes
// ahead of the kvstore, when failure detection says so.
func (r *Router) SetNodeDown(name string, down bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	defer r.refill() // before the unlock: a remote key that went frees a place
	if r.down[name] == down || name == r.self {
		return
	}
	if down {
		r.down[name] = true
	} else {
		delete(r.down, name)
	}
	n, known := r.nodes[name]
	// Only the entries the node may have were written, and are again:
	// until 2026-12-06 a node whose entries were held back (refused, or
	// not known where nodes are required) had them all written when
	// failure detection saw it come back.
	r.heldOf(name, func(e ipcache.Entry) {
		switch {
		case !r.entryOK(e):
		case down:
			r.deleteIPCache(netip.PrefixFrom(e.IP, 32))
		default:
			r.writeEntry(e)
		}
	})
	if known {
		if down {
			r.forgetNode(n, false)
		} else {
			r.learnNode(n)
		}
		if r.sp != nil && clusterOf(name) != "" {
			r.syncNode(name)
		}
	}
}

// Wanted returns the remote ipcache entries the datapath should hold
// (for reconciliation).
func (r *Router) Wanted() map[netip.Prefix]ipcache.Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[netip.Prefix]ipcache.Entry{}
	for ip, e := range r.entries {
		if !r.entryOK(e) {
			continue
		}
		if !r.down[e.Node] {
			out[netip.PrefixFrom(ip, 32)] = e
		}
	}
	r.sparseWanted(out)
	r.withoutRefused(out)
	return out
}
