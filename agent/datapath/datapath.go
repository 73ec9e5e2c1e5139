// Package datapath owns the node's eBPF datapath in the kernel: it loads the
// programs of package bpf, keeps their maps pinned on bpffs so they outlive
// an agent restart, attaches the programs to each endpoint's host-side veth
// (tcx, or classic tc clsact where tcx is missing), writes the ipcache,
// endpoints and policy maps, collects expired conntrack entries, and reads
// counters and events.
package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/policy"
	"github.com/filament-net/filament/bpf"
)

// Reasons of drops, as the programs count and report them: the values
// come from the generated bindings of bpf/lib/reasons.h (enum reason).
const (
	ReasonForwarded      = uint8(bpf.DatapathReasonREASON_FORWARDED)
	ReasonPolicyDenied   = uint8(bpf.DatapathReasonREASON_POLICY_DENIED)
	ReasonPolicyDenyRule = uint8(bpf.DatapathReasonREASON_POLICY_DENY_RULE)
	ReasonCTMissing      = uint8(bpf.DatapathReasonREASON_CT_MISSING)
	ReasonInvalid        = uint8(bpf.DatapathReasonREASON_INVALID)
	ReasonFragment       = uint8(bpf.DatapathReasonREASON_FRAGMENT)
	ReasonUnsupportedL3  = uint8(bpf.DatapathReasonREASON_UNSUPPORTED_L3)
	ReasonBadSource      = uint8(bpf.DatapathReasonREASON_BAD_SOURCE)
	ReasonTunnelSource   = uint8(bpf.DatapathReasonREASON_TUNNEL_SOURCE)
	ReasonNoBackend      = uint8(bpf.DatapathReasonREASON_NO_BACKEND)
	ReasonLBNAT          = uint8(bpf.DatapathReasonREASON_LB_NAT)
	ReasonNoEncryptPeer  = uint8(bpf.DatapathReasonREASON_NO_ENCRYPT_PEER)
	ReasonControlPort    = uint8(bpf.DatapathReasonREASON_CONTROL_PORT)
	ReasonNoProxy        = uint8(bpf.DatapathReasonREASON_NO_PROXY)
	ReasonProxyBypass    = uint8(bpf.DatapathReasonREASON_PROXY_BYPASS)
	ReasonForgedSource   = uint8(bpf.DatapathReasonREASON_FORGED_SOURCE)
	ReasonFragNeeded     = uint8(bpf.DatapathReasonREASON_FRAG_NEEDED)
	ReasonNoRoute        = uint8(bpf.DatapathReasonREASON_NO_ROUTE)
	ReasonForeignVNI     = uint8(bpf.DatapathReasonREASON_FOREIGN_VNI)
	reasonMax            = uint32(bpf.DatapathReasonREASON_MAX)
)

var reasonNames = [reasonMax]string{
	"forwarded", "policy denied", "policy deny rule", "no conntrack entry",
	"invalid packet", "fragment of no first fragment seen (or of TCP)", "unsupported L3 protocol", "source address not of the endpoint",
	"tunnel source not a known node", "service has no backend", "NodePort translation unavailable (no free source port, a local backend's live connection on the tuple, or half of it gone)",
	"encryption: node is not a peer (strict)", "node control port",
	"L7 proxy not listening", "L7 rules apply but the flow did not go through the proxy",
	"a pod's address on a packet not from that pod",
	"NodePort packet too big for the path (ICMP fragmentation needed sent when DF is set)",
	"no route for a translated NodePort packet",
	"tunnel identity not of the sending node's cluster",
}

// incompatiblePins names the maps pinned in dir that spec's maps of the
// same name cannot use (another type, key, value or size).
func incompatiblePins(spec *ebpf.CollectionSpec, dir string) []string {
	var out []string
	for name, ms := range spec.Maps {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
		if err != nil {
			continue
		}
		if ms.Compatible(m) != nil {
			out = append(out, name)
		}
		m.Close()
	}
	// Conntrack entries carry the revision their policy was checked at: a
	// new revision map starts again from 0 and could meet an old entry's
	// revision, so they go with it (both tables).
	if slices.Contains(out, "revision") {
		for _, ct := range []string{"conntrack", "conntrack_new"} {
			if !slices.Contains(out, ct) {
				out = append(out, ct)
			}
		}
	}
	return out
}

// ReasonName is the text of a reason code.
func ReasonName(r uint8) string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason %d", r)
}

// Endpoint flags in the endpoints map.
const (
	flagIngressEnforced = 1
	flagEgressEnforced  = 2
)

// policyFlagPort marks a policy entry naming one protocol and port exactly
// (bpf/lib/maps.h POLICY_F_PORT): only such an allow opens a node's control
// port to a pod.
const policyFlagPort = 1

// MaxControlPorts is how many control ports the datapath protects.
const MaxControlPorts = 8

// ErrBPFFS: the pin directory is not on a bpf filesystem and cannot be made so.
var ErrBPFFS = errors.New("bpffs unavailable")

// Config of the datapath.
type Config struct {
	// BPFRoot is a bpffs mount point (mounted if it is not one yet).
	BPFRoot string
	// Cluster and Node name the pin directory: <BPFRoot>/filament/<Cluster>/<Node>.
	Cluster, Node string
	// Attach: "auto" (tcx, else tc), "tcx" or "tc".
	Attach string
	// MaglevSize is the Maglev table size, set into the programs at load
	// (the caller chooses and checks it: a prime, see agent/service/maglev).
	MaglevSize uint32
	// ProxyPort is the node's L7 proxy listener: flows of policy entries
	// with L7 rules are steered to it.
	ProxyPort uint16
}

// noProxyPort is the proxy port of L7 entries when no proxy is configured:
// a port nothing listens on, so their flows are dropped (REASON_NO_PROXY)
// rather than let through without their L7 rules.
const noProxyPort = 0xffff

// Datapath is the loaded programs and pinned maps of one node.
type Datapath struct {
	objs   bpf.DatapathObjects
	pinDir string
	attach string

	mu         sync.Mutex
	writes     uint64 // policy map writes (upserts and deletes), for tests and metrics
	lb         lb
	maglevSize uint32
	nodeDevs   map[string]bool // devices of the node itself (overlay, underlay), not endpoints
	proxyPort  uint16

	// forget deletes NodePort translations of gone backends (lb.go);
	// closed ends its goroutine.
	forget    forgetter
	scrub     scrubber // conntrack entries of gone endpoints (scrub.go)
	closed    chan struct{}
	closeOnce sync.Once

	lost atomic.Uint64 // EventsLost
	rev  revision

	// ipcGen counts the ipcache writes (this process makes them all);
	// ipcSnap is IPCacheSnapshot's last listing and the count it was made
	// at.
	ipcGen  atomic.Uint64
	ipcSnap atomic.Pointer[ipcacheSnapshot]
}

type ipcacheSnapshot struct {
	gen uint64
	m   map[netip.Prefix]identity.NumericIdentity
}

const bpffsMagic = 0xcafe4a11

// EnsureBPFFS mounts bpffs on root (made if missing) unless one is there.
func EnsureBPFFS(root string) error {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrBPFFS, root, err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil {
		return fmt.Errorf("%w: statfs %s: %v", ErrBPFFS, root, err)
	}
	if st.Type == bpffsMagic {
		return nil
	}
	if err := unix.Mount("bpf", root, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("%w: mount bpffs on %s: %v", ErrBPFFS, root, err)
	}
	return nil
}

// PinDir is where a node's maps and links are pinned.
func PinDir(root, cluster, node string) string { return filepath.Join(root, "filament", cluster, node) }

// Load loads the programs and opens (or creates) the pinned maps. Maps whose
// pinned layout no longer matches the program are replaced.
func Load(c Config) (*Datapath, error) {
	if c.Attach == "" {
		c.Attach = "auto"
	}
	switch c.Attach {
	case "auto", "tcx", "tc":
	default:
		return nil, fmt.Errorf("datapath attach mode %q: want auto, tcx or tc", c.Attach)
	}
	if err := EnsureBPFFS(c.BPFRoot); err != nil {
		return nil, err
	}
	if c.Cluster == "" {
		c.Cluster = "default"
	}
	pinDir := PinDir(c.BPFRoot, c.Cluster, c.Node)
	if err := os.MkdirAll(filepath.Join(pinDir, "links"), 0o700); err != nil {
		return nil, fmt.Errorf("pin dir: %w", err)
	}
	spec, err := bpf.LoadDatapath()
	if err != nil {
		return nil, fmt.Errorf("load datapath spec: %w", err)
	}
	if c.MaglevSize == 0 {
		return nil, fmt.Errorf("datapath: MaglevSize: required (the Maglev table size)")
	}
	if err := spec.Variables["maglev_size"].Set(c.MaglevSize); err != nil {
		return nil, fmt.Errorf("maglev size: %w", err)
	}
	spec.Maps["lb_maglev"].ValueSize = 4 * c.MaglevSize
	// Pin the program maps; sections of global variables (.bss, .rodata) are
	// per load and not pinned.
	for name, m := range spec.Maps {
		if !strings.HasPrefix(name, ".") {
			m.Pinning = ebpf.PinByName
		}
	}
	d := &Datapath{pinDir: pinDir, attach: c.Attach, maglevSize: c.MaglevSize, proxyPort: c.ProxyPort, nodeDevs: map[string]bool{},
		closed: make(chan struct{})}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: pinDir}}
	var oldNATs *ebpf.Map  // lb_nats of the old layout, copied once the new one is loaded
	var oldNodes *ebpf.Map // nodes of an earlier size, likewise
	err = spec.LoadAndAssign(&d.objs, opts)
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		// Only the maps that changed are replaced: a new drop reason
		// (counters) must not cost every established flow its conntrack
		// entry.
		slog.Warn("pinned maps do not match the new programs; replacing those", "dir", pinDir, "err", err)
		if old := oldLBNats(pinDir); old != nil {
			oldNATs = old
			defer old.Close()
		}
		if old := oldResized(pinDir, "nodes", spec); old != nil {
			oldNodes = old
			defer old.Close()
		}
		for _, name := range incompatiblePins(spec, pinDir) {
			slog.Warn("pinned map replaced", "map", name)
			os.Remove(filepath.Join(pinDir, name))
		}
		err = spec.LoadAndAssign(&d.objs, opts)
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			for name := range spec.Maps {
				os.Remove(filepath.Join(pinDir, name))
			}
			err = spec.LoadAndAssign(&d.objs, opts)
		}
	}
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load datapath programs: %+v", ve)
		}
		return nil, fmt.Errorf("load datapath programs: %w", err)
	}
	if oldNATs != nil {
		migrateLBNats(oldNATs, d.objs.LbNats)
	}
	if oldNodes != nil {
		copyEntries("nodes", oldNodes, d.objs.Nodes)
	}
	if err := d.readRevision(); err != nil {
		d.Close()
		return nil, err
	}
	if err := d.lbInit(); err != nil {
		d.Close()
		return nil, fmt.Errorf("read service maps: %w", err)
	}
	return d, nil
}

// Close releases the programs and maps held by this process; pins and
// attached links stay, so traffic keeps flowing until the next agent takes over.
func (d *Datapath) Close() error {
	d.closeOnce.Do(func() {
		if d.closed != nil {
			close(d.closed)
		}
	})
	// A walk of the NodePort translations or of conntrack under way ends
	// first (forgetter, scrubber).
	d.forget.walk.Lock()
	defer d.forget.walk.Unlock()
	d.scrub.walk.Lock()
	defer d.scrub.walk.Unlock()
	return d.objs.Close()
}

// isClosed says whether Close ran.
func (d *Datapath) isClosed() bool {
	select {
	case <-d.closed:
		return true
	default:
		return false
	}
}

// OriginMapPath is where the proxy_origin map is pinned: the L7 proxy
// reads the source identity of the connections steered to it there.
func (d *Datapath) OriginMapPath() string { return filepath.Join(d.pinDir, bpf.DatapathMapProxyOrigin) }

// FrontendMapPath is where proxy_frontends is pinned: the L7 proxy reads
// there the backend of each NodePort connection steered to it
// untranslated.
func (d *Datapath) FrontendMapPath() string {
	return filepath.Join(d.pinDir, bpf.DatapathMapProxyFrontends)
}

// IPCacheMapPath is where the ipcache is pinned: the L7 proxy reads
// destinations' identities from it.
func (d *Datapath) IPCacheMapPath() string { return filepath.Join(d.pinDir, bpf.DatapathMapIpcache) }

// Remove unpins everything of the node (used when a node is torn down).
func (d *Datapath) Remove() error { return os.RemoveAll(d.pinDir) }

// Objects exposes the loaded programs and maps (tests and benchmarks).
func (d *Datapath) Objects() *bpf.DatapathObjects { return &d.objs }

func ipv4(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:]) // the bytes as they are in the packet
}

func addrFrom(u uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], u)
	return netip.AddrFrom4(b)
}

// EndpointEntry is what the datapath knows of a local endpoint.
type EndpointEntry struct {
	ID              uint16
	IP              netip.Addr
	Identity        identity.NumericIdentity
	HostIfIndex     int
	MAC, HostMAC    net.HardwareAddr
	IngressEnforced bool
	EgressEnforced  bool
}

func (e EndpointEntry) value() bpf.DatapathEndpointInfo {
	v := bpf.DatapathEndpointInfo{Ifindex: uint32(e.HostIfIndex), Identity: uint32(e.Identity), EpId: e.ID}
	if e.IngressEnforced {
		v.Flags |= flagIngressEnforced
	}
	if e.EgressEnforced {
		v.Flags |= flagEgressEnforced
	}
	copy(v.Mac[:], e.MAC)
	copy(v.HostMac[:], e.HostMAC)
	return v
}

// UpsertEndpoint writes a local endpoint.
func (d *Datapath) UpsertEndpoint(e EndpointEntry) error {
	k := ipv4(e.IP)
	v := e.value()
	if err := d.objs.Endpoints.Put(&k, &v); err != nil {
		return fmt.Errorf("endpoints map: put %s: %w", e.IP, err)
	}
	return d.bump()
}

// SetEnforcement updates the enforcement flags of the endpoint at ip.
func (d *Datapath) SetEnforcement(ip netip.Addr, ingress, egress bool) error {
	k := ipv4(ip)
	var v bpf.DatapathEndpointInfo
	if err := d.objs.Endpoints.Lookup(&k, &v); err != nil {
		return fmt.Errorf("endpoints map: lookup %s: %w", ip, err)
	}
	v.Flags = 0
	if ingress {
		v.Flags |= flagIngressEnforced
	}
	if egress {
		v.Flags |= flagEgressEnforced
	}
	return d.bumpAfter(d.objs.Endpoints.Put(&k, &v))
}

// DeleteEndpoint removes the endpoint at ip; absent is not an error. The
// conntrack entries naming ip go shortly after, in the scrubber's walk.
func (d *Datapath) DeleteEndpoint(ip netip.Addr) error {
	k := ipv4(ip)
	if err := d.objs.Endpoints.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("endpoints map: delete %s: %w", ip, err)
	}
	d.scrub.queue(d, ip)
	return d.bump()
}

// Endpoints lists the endpoints map (IP → entry).
func (d *Datapath) Endpoints() (map[netip.Addr]bpf.DatapathEndpointInfo, error) {
	out := map[netip.Addr]bpf.DatapathEndpointInfo{}
	var k uint32
	var v bpf.DatapathEndpointInfo
	it := d.objs.Endpoints.Iterate()
	for it.Next(&k, &v) {
		out[addrFrom(k)] = v
	}
	return out, it.Err()
}

func ipcacheKey(p netip.Prefix) bpf.DatapathIpcacheKey {
	return bpf.DatapathIpcacheKey{Prefixlen: uint32(p.Bits()), Ip: ipv4(p.Masked().Addr())}
}

// UpsertIPCache maps prefix to identity.
func (d *Datapath) UpsertIPCache(p netip.Prefix, id identity.NumericIdentity) error {
	return d.UpsertIPCacheTunnel(p, id, netip.Addr{})
}

// UpsertIPCacheTunnel maps prefix to identity, reached through the tunnel
// to node tunnel (when valid).
func (d *Datapath) UpsertIPCacheTunnel(p netip.Prefix, id identity.NumericIdentity, tunnel netip.Addr) error {
	return d.putIPCache(p, id, tunnel, 0)
}

// UpsertIPCacheCover writes a remote node's pod CIDR with its cluster's
// cover identity (flag IPCACHE_F_COVER: a flow admitted with it has its
// replies judged with their own identity, agent/sparse).
func (d *Datapath) UpsertIPCacheCover(p netip.Prefix, id identity.NumericIdentity, tunnel netip.Addr) error {
	return d.putIPCache(p, id, tunnel, IPCacheFlagCover)
}

func (d *Datapath) putIPCache(p netip.Prefix, id identity.NumericIdentity, tunnel netip.Addr, flags uint8) error {
	k := ipcacheKey(p)
	v := bpf.DatapathIpcacheValue{Identity: uint32(id), Flags: flags}
	if tunnel.Is4() {
		v.TunnelIp = ipv4(tunnel)
	}
	err := d.objs.Ipcache.Put(&k, &v)
	d.ipcGen.Add(1)
	if err != nil {
		return fmt.Errorf("ipcache: put %s: %w", p, err)
	}
	return d.bump()
}

// IPCacheFlagCover is IPCACHE_F_COVER of bpf/lib/maps.h.
const IPCacheFlagCover = 1

// DeleteIPCache removes prefix; absent is not an error.
func (d *Datapath) DeleteIPCache(p netip.Prefix) error {
	k := ipcacheKey(p)
	err := d.objs.Ipcache.Delete(&k)
	d.ipcGen.Add(1)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("ipcache: delete %s: %w", p, err)
	}
	return d.bump()
}

// LookupIPCache returns the identity of a's longest ipcache prefix.
func (d *Datapath) LookupIPCache(a netip.Addr) (identity.NumericIdentity, bool) {
	if !a.Is4() {
		return 0, false
	}
	k := ipcacheKey(netip.PrefixFrom(a, 32))
	var v bpf.DatapathIpcacheValue
	if err := d.objs.Ipcache.Lookup(&k, &v); err != nil {
		return 0, false
	}
	return identity.NumericIdentity(v.Identity), true
}

// IPCacheSnapshot is IPCache for readers that ask often (the L7 proxy's
// configuration, built every second): the last listing while no ipcache
// write has been made since, else a new one. Listing the map takes two
// system calls per entry, and a node with a large mesh or many learned
// DNS addresses holds hundreds of thousands. The map is shared: callers
// must not modify it. gen counts this process's ipcache writes before the
// listing (never 0): the same gen, the same map. When the listing fails,
// the last one is returned with its gen, and the error.
func (d *Datapath) IPCacheSnapshot() (m map[netip.Prefix]identity.NumericIdentity, gen uint64, err error) {
	gen = d.ipcGen.Load() + 1 // before the listing: a write during it makes the next call list again
	if s := d.ipcSnap.Load(); s != nil && s.gen == gen {
		return s.m, gen, nil
	}
	if m, err = d.IPCache(); err != nil {
		if s := d.ipcSnap.Load(); s != nil {
			return s.m, s.gen, err // the last listing, rather than none
		}
		return nil, 0, err
	}
	d.ipcSnap.Store(&ipcacheSnapshot{gen: gen, m: m})
	return m, gen, nil
}

// IPCache lists the ipcache as it is in the kernel.
func (d *Datapath) IPCache() (map[netip.Prefix]identity.NumericIdentity, error) {
	out := map[netip.Prefix]identity.NumericIdentity{}
	var k bpf.DatapathIpcacheKey
	var v bpf.DatapathIpcacheValue
	it := d.objs.Ipcache.Iterate()
	for it.Next(&k, &v) {
		out[netip.PrefixFrom(addrFrom(k.Ip), int(k.Prefixlen))] = identity.NumericIdentity(v.Identity)
	}
	return out, it.Err()
}

// PolicyKey converts a resolver key to the map's layout.
func PolicyKey(k policy.MapKey) bpf.DatapathPolicyKey {
	return bpf.DatapathPolicyKey{
		Prefixlen: 64 + uint32(k.L4.PrefixLen),
		EpId:      k.Endpoint,
		Dir:       uint8(k.Dir),
		Identity:  uint32(k.Identity),
		Proto:     k.L4.Proto,
		Port:      [2]uint8{uint8(k.L4.Port >> 8), uint8(k.L4.Port)},
	}
}

func fromPolicyKey(k bpf.DatapathPolicyKey) policy.MapKey {
	return policy.MapKey{
		Endpoint: k.EpId, Dir: policy.Direction(k.Dir), Identity: identity.NumericIdentity(k.Identity),
		L4: policy.L4{Proto: k.Proto, Port: uint16(k.Port[0])<<8 | uint16(k.Port[1]), PrefixLen: uint8(k.Prefixlen - 64)},
	}
}

// ApplyPolicy writes a resolver change to the policy map and returns the
// number of map writes it made.
func (d *Datapath) ApplyPolicy(upserts map[policy.MapKey]policy.MapValue, deletes []policy.MapKey) (n int, err error) {
	// What was written is published (the revision bumped) even when a
	// later write fails: a delete that went in must reach open flows.
	defer func() {
		if n > 0 {
			if berr := d.bump(); err == nil {
				err = berr
			}
		}
	}()
	for _, k := range deletes {
		bk := PolicyKey(k)
		if err := d.objs.Policy.Delete(&bk); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, fmt.Errorf("policy map: delete: %w", err)
		}
		n++
	}
	for k, v := range upserts {
		bk := PolicyKey(k)
		bv := bpf.DatapathPolicyValue{}
		if v.Deny {
			bv.Deny = 1
		}
		if StateOf(k, v).Named {
			bv.Flags = policyFlagPort
		}
		if v.L7 != "" && !v.Deny {
			// Fail closed: with no proxy port configured the flow is
			// steered to port 0, which nothing listens on, and dropped.
			bv.ProxyPort = d.proxyPort
			if bv.ProxyPort == 0 {
				bv.ProxyPort = noProxyPort
			}
		}
		if err := d.objs.Policy.Put(&bk, &bv); err != nil {
			return n, fmt.Errorf("policy map: put: %w", err)
		}
		n++
	}
	d.mu.Lock()
	d.writes += uint64(n)
	d.mu.Unlock()
	return n, nil
}

// PolicyWrites is the number of policy map writes since load.
func (d *Datapath) PolicyWrites() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.writes
}

// PolicyEntries lists the policy map.
func (d *Datapath) PolicyEntries() (map[policy.MapKey]bool, error) {
	vs, err := d.PolicyValues()
	out := make(map[policy.MapKey]bool, len(vs))
	for k, v := range vs {
		out[k] = v.Deny
	}
	return out, err
}

// PolicyState is what the policy map holds of an entry's value: its
// verdict, whether the flow goes through the L7 proxy, and whether the
// entry names its peer's port exactly (policyFlagPort: it opens the
// nodes' control ports on that port).
type PolicyState struct{ Deny, Proxy, Named bool }

// StateOf is the PolicyState ApplyPolicy writes for k and v.
func StateOf(k policy.MapKey, v policy.MapValue) PolicyState {
	return PolicyState{Deny: v.Deny, Proxy: v.L7 != "" && !v.Deny, Named: k.L4.PrefixLen == 24 && !v.Wide}
}

// PolicyValues lists the policy map with each entry's PolicyState.
func (d *Datapath) PolicyValues() (map[policy.MapKey]PolicyState, error) {
	out := map[policy.MapKey]PolicyState{}
	var k bpf.DatapathPolicyKey
	var v bpf.DatapathPolicyValue
	it := d.objs.Policy.Iterate()
	for it.Next(&k, &v) {
		out[fromPolicyKey(k)] = PolicyState{Deny: v.Deny != 0, Proxy: v.ProxyPort != 0, Named: v.Flags&policyFlagPort != 0}
	}
	return out, it.Err()
}

// Counter is a packet and byte count for one reason and direction.
type Counter struct {
	Reason    uint8
	Direction policy.Direction
	Packets   uint64
	Bytes     uint64
}

// Counters sums the per-CPU counters.
func (d *Datapath) Counters() ([]Counter, error) {
	var out []Counter
	for key := uint32(0); key < reasonMax*2; key++ {
		var per []bpf.DatapathCounter
		if err := d.objs.Counters.Lookup(&key, &per); err != nil {
			return nil, fmt.Errorf("counters: %w", err)
		}
		c := Counter{Reason: uint8(key / 2), Direction: policy.Direction(key % 2)}
		for _, p := range per {
			c.Packets += p.Packets
			c.Bytes += p.Bytes
		}
		out = append(out, c)
	}
	return out, nil
}

// MapPressure returns, per map name, entries in use divided by capacity for
// the maps that grow (counted by iteration).
func (d *Datapath) MapPressure() map[string]float64 {
	out := map[string]float64{}
	// The flow tables in batches (eachEntry): a flood of new flows, when
	// their pressure matters most, makes a walk by key give up.
	for name, m := range map[string]*ebpf.Map{"conntrack": d.objs.Conntrack, "conntrack_new": d.objs.ConntrackNew} {
		n := 0
		eachEntry(m, func(*bpf.DatapathCtKey, *bpf.DatapathCtEntry) { n++ })
		out[name] = float64(n) / float64(m.MaxEntries())
	}
	for name, m := range map[string]*ebpf.Map{"lb_nat": d.objs.LbNats, "lb_nat_new": d.objs.LbNatsNew} {
		n := 0
		eachEntry(m, func(*bpf.DatapathLbNatKey, *bpf.DatapathLbNat) { n++ })
		out[name] = float64(n) / float64(m.MaxEntries())
	}
	for name, m := range map[string]*ebpf.Map{"ipcache": d.objs.Ipcache, "endpoints": d.objs.Endpoints, "policy": d.objs.Policy,
		"lb_services": d.objs.LbServices} {
		n := 0
		k := make([]byte, m.KeySize())
		v := make([]byte, m.ValueSize())
		it := m.Iterate()
		for it.Next(&k, &v) {
			n++
		}
		out[name] = float64(n) / float64(m.MaxEntries())
	}
	return out
}

// setConfig changes the node config entry under the lock.
func (d *Datapath) setConfig(f func(*bpf.DatapathNodeConfig)) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	k := uint32(0)
	var v bpf.DatapathNodeConfig
	if err := d.objs.Config.Lookup(&k, &v); err != nil {
		return fmt.Errorf("config map: %w", err)
	}
	f(&v)
	if err := d.objs.Config.Put(&k, &v); err != nil {
		return fmt.Errorf("config map: %w", err)
	}
	return d.bump()
}

// SetControlPorts sets the nodes' control ports (TCP and UDP) that pods
// reach on a node address only when their egress policy names the port,
// and no NodePort translates to there; bit i of kvstore marks ports[i]
// as the kvstore's, which a NodePort may translate to.
func (d *Datapath) SetControlPorts(ports []uint16, kvstore uint16) error {
	if len(ports) > MaxControlPorts {
		return fmt.Errorf("control ports: %d given, at most %d", len(ports), MaxControlPorts)
	}
	return d.setConfig(func(v *bpf.DatapathNodeConfig) {
		v.ControlPorts = [MaxControlPorts]uint16{}
		copy(v.ControlPorts[:], ports)
		v.KvstorePorts = kvstore
	})
}

// SetEncryptSNAT sets the address NodePort traffic to a backend on an
// encryption peer is translated from: this node's gateway, inside its pod
// CIDR, so the peer accepts it from the tunnel and routes replies back
// through it (invalid: translate from the node's address, no encryption).
func (d *Datapath) SetEncryptSNAT(a netip.Addr) error {
	return d.setConfig(func(v *bpf.DatapathNodeConfig) {
		v.EncryptSnat = 0
		if a.IsValid() {
			v.EncryptSnat = ipv4(a)
		}
	})
}

// SetHostSource sets the node's own address that its traffic to other
// nodes' pods leaves from in tunnel mode (routing.Router.SetHostSource):
// from_host speaks as remote-node for that source only, as the world for
// anything else the node forwards into the tunnel (invalid: remote-node
// for all, as before it was known).
func (d *Datapath) SetHostSource(a netip.Addr) error {
	return d.setConfig(func(v *bpf.DatapathNodeConfig) {
		v.HostSrc = 0
		if a.Is4() {
			v.HostSrc = ipv4(a)
		}
	})
}

// SetNodeIP sets the node's address, whose NodePort frontends stand for
// every node of the cluster's at a pod's socket (invalid: none).
func (d *Datapath) SetNodeIP(a netip.Addr) error {
	return d.setConfig(func(v *bpf.DatapathNodeConfig) {
		v.NodeIp = 0
		if a.Is4() {
			v.NodeIp = ipv4(a)
		}
	})
}

// SetWireGuardPort sets the UDP port the WireGuard device listens on (the
// same on every node; 0: none): from_netdev passes datagrams from and to it
// without its NodePort and L7 lookups, and NodePort translation never
// picks it as a source port.
func (d *Datapath) SetWireGuardPort(port uint16) error {
	return d.setConfig(func(v *bpf.DatapathNodeConfig) { v.WireguardPort = port })
}

// SetTunnel tells the programs which device encapsulates (0: none).
func (d *Datapath) SetTunnel(vxlanIfIndex int) error {
	return d.setConfig(func(v *bpf.DatapathNodeConfig) { v.VxlanIfindex = uint32(vxlanIfIndex) })
}

// SetKernelForwarding leaves native routing's pod traffic between nodes to
// the kernel's IP forwarding (true) instead of the programs' FIB redirects
// (bpf/lib/fib.h; the default).
func (d *Datapath) SetKernelForwarding(on bool) error {
	return d.setConfig(func(v *bpf.DatapathNodeConfig) {
		v.KernelForwarding = 0
		if on {
			v.KernelForwarding = 1
		}
	})
}

// Encryption flags in the node config (bpf/lib/maps.h ENCRYPT_*).
const (
	encryptOn     = 1
	encryptStrict = 2
)

// SetEncryption turns routing of pod traffic to peers through the
// encryption device on or off; strict drops traffic to nodes that are not
// peers instead of sending it in clear.
func (d *Datapath) SetEncryption(on, strict bool) error {
	return d.setConfig(func(v *bpf.DatapathNodeConfig) {
		v.Encrypt = 0
		if on {
			v.Encrypt |= encryptOn
			if strict {
				v.Encrypt |= encryptStrict
			}
		}
	})
}

// Flow event modes (SetFlowEvents, the agent's --flow-events): which
// forwarded connections the programs report on the events ring. Drops are
// reported in every mode.
const (
	// FlowEventsConnections reports every new forwarded connection, at
	// every endpoint (enforced or not): one event per connection and
	// endpoint, none for its later packets.
	FlowEventsConnections = "connections"
	// FlowEventsEnforced reports new forwarded connections only in the
	// directions an endpoint's policy enforces.
	FlowEventsEnforced = "enforced"
	// FlowEventsOff reports no forwarded connection.
	FlowEventsOff = "off"
)

// ErrFlowEvents: a flow event mode that is none of FlowEvents*.
var ErrFlowEvents = errors.New("flow events mode")

var flowEventModes = map[string]bpf.DatapathFlowEvents{
	FlowEventsConnections: bpf.DatapathFlowEventsFLOW_EVENTS_CONNECTIONS,
	FlowEventsEnforced:    bpf.DatapathFlowEventsFLOW_EVENTS_ENFORCED,
	FlowEventsOff:         bpf.DatapathFlowEventsFLOW_EVENTS_OFF,
}

// SetFlowEvents sets which forwarded connections are reported (FlowEvents*).
func (d *Datapath) SetFlowEvents(mode string) error {
	m, ok := flowEventModes[mode]
	if !ok {
		return fmt.Errorf("%w %q: want %s, %s or %s", ErrFlowEvents, mode, FlowEventsConnections, FlowEventsEnforced, FlowEventsOff)
	}
	return d.setConfig(func(v *bpf.DatapathNodeConfig) { v.FlowEvents = uint32(m) })
}

// SetPolicyAudit turns policy audit mode on or off (the agent's
// --policy-audit-mode): new connections that policy would drop for lack of
// an allow or by a deny rule pass instead, each reported once as an
// audited policy verdict with the reason it would have been dropped for.
// Other drops are not affected.
func (d *Datapath) SetPolicyAudit(on bool) error {
	return d.setConfig(func(v *bpf.DatapathNodeConfig) {
		v.PolicyAudit = 0
		if on {
			v.PolicyAudit = 1
		}
	})
}

// eventLosses reads how many events the programs could not report because
// the events ring was full (its reader fell behind), summed over the CPUs.
func (d *Datapath) eventLosses() (uint64, error) {
	var per []uint64
	if err := d.objs.EventLosses.Lookup(uint32(0), &per); err != nil {
		return 0, fmt.Errorf("event losses: %w", err)
	}
	var n uint64
	for _, x := range per {
		n += x
	}
	return n, nil
}

// UpsertEncryptPeer marks the node at ip as an encryption peer.
func (d *Datapath) UpsertEncryptPeer(ip netip.Addr) error {
	return d.addAddr(d.objs.EncryptPeers, "encrypt peers", ip)
}

// DeleteEncryptPeer forgets an encryption peer.
func (d *Datapath) DeleteEncryptPeer(ip netip.Addr) {
	k := ipv4(ip)
	d.objs.EncryptPeers.Delete(&k)
	if err := d.bump(); err != nil {
		slog.Warn("datapath revision not bumped after an encryption peer's removal", "peer", ip, "err", err)
	}
}

// EncryptPeers lists the encryption peers.
func (d *Datapath) EncryptPeers() (map[netip.Addr]bool, error) { return addrsOf(d.objs.EncryptPeers) }

// UpsertNode marks ip as a known node's (accepted tunnel source): of this
// cluster when ofCluster, else of remote cluster remoteCluster, which
// bounds the identities it may send as a VNI to its cluster's
// (remote_vni_ok; 0: unbounded, as before 2026-12-07).
func (d *Datapath) UpsertNode(ip netip.Addr, ofCluster bool, remoteCluster uint32) error {
	return d.putAddr(d.objs.Nodes, "nodes map", ip, nodeValue(ofCluster, remoteCluster))
}

// nodeValue is a nodes map value (bpf/lib/maps.h: NODE_F_*, and a remote
// cluster's ID and the identity layout's shift).
func nodeValue(ofCluster bool, remoteCluster uint32) uint32 {
	v := uint32(nodeKnown)
	switch {
	case ofCluster:
		v |= nodeOfCluster
	case remoteCluster != 0:
		v |= (remoteCluster&0x1ff)<<8 | (identity.ClusterIDShift&0x1f)<<24
	}
	return v
}

// The nodes map's values (NODE_F_* in bpf/lib/maps.h).
const (
	nodeKnown     = 1
	nodeOfCluster = 2 // a node of this cluster: its NodePorts are this node's (lb_sock_nodeport)
)

// DeleteNode forgets a node address.
func (d *Datapath) DeleteNode(ip netip.Addr) error {
	return d.removeAddr(d.objs.Nodes, "nodes map", ip)
}

// Nodes lists the known node addresses.
func (d *Datapath) Nodes() (map[netip.Addr]bool, error) { return addrsOf(d.objs.Nodes) }

// UpsertNodeLocalAddr marks ip as another address of a known node (its
// control ports are closed to pods as at its underlay address).
func (d *Datapath) UpsertNodeLocalAddr(ip netip.Addr) error {
	return d.addAddr(d.objs.NodeLocalAddrs, "node_local_addrs map", ip)
}

// DeleteNodeLocalAddr forgets another address of a node.
func (d *Datapath) DeleteNodeLocalAddr(ip netip.Addr) error {
	return d.removeAddr(d.objs.NodeLocalAddrs, "node_local_addrs map", ip)
}

// NodeLocalAddrs lists the nodes' other addresses.
func (d *Datapath) NodeLocalAddrs() (map[netip.Addr]bool, error) {
	return addrsOf(d.objs.NodeLocalAddrs)
}

// addAddr and removeAddr write a set of addresses (a hash of IPv4
// address → 1: nodes, node_local_addrs, encrypt_peers) and bump the
// revision; a missing address is no error to remove.
func (d *Datapath) addAddr(m *ebpf.Map, name string, ip netip.Addr) error {
	return d.putAddr(m, name, ip, 1)
}

func (d *Datapath) putAddr(m *ebpf.Map, name string, ip netip.Addr, v uint32) error {
	k := ipv4(ip)
	if err := m.Put(&k, &v); err != nil {
		return fmt.Errorf("%s: put %s: %w", name, ip, err)
	}
	return d.bump()
}

func (d *Datapath) removeAddr(m *ebpf.Map, name string, ip netip.Addr) error {
	k := ipv4(ip)
	if err := m.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("%s: delete %s: %w", name, ip, err)
	}
	return d.bump()
}

// addrsOf lists a set of addresses.
func addrsOf(m *ebpf.Map) (map[netip.Addr]bool, error) {
	out := map[netip.Addr]bool{}
	var k, v uint32
	it := m.Iterate()
	for it.Next(&k, &v) {
		out[addrFrom(k)] = true
	}
	return out, it.Err()
}
