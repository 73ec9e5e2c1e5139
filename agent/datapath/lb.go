package datapath

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/filament-net/filament/bpf"
)

// Service flags and algorithms, as bpf/lib/lb.h has them.
const (
	lbFlagAffinity = 1
	lbFlagNodePort = 2
)

// Algorithm picks a backend for a new connection.
type Algorithm uint8

const (
	AlgRandom Algorithm = 0
	AlgMaglev Algorithm = 1
)

// Frontend is a service address as the load balancer matches it.
type Frontend struct {
	IP    netip.Addr
	Port  uint16
	Proto uint8 // unix.IPPROTO_TCP or IPPROTO_UDP
}

func (f Frontend) String() string {
	p := "tcp"
	if f.Proto == unix.IPPROTO_UDP {
		p = "udp"
	}
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(f.IP, f.Port), p)
}

func (f Frontend) key() bpf.DatapathLbKey {
	return bpf.DatapathLbKey{Vip: ipv4(f.IP), Port: htons(f.Port), Proto: f.Proto}
}

// LBBackend is one backend in a service's slots.
type LBBackend struct {
	IP   netip.Addr
	Port uint16
}

// LBService is what the datapath needs of one frontend: the backends new
// connections may use (already filtered for affinity and health).
type LBService struct {
	Backends        []LBBackend
	NodePort        bool
	Algorithm       Algorithm
	AffinityTimeout uint32 // seconds; 0 = no session affinity
	// Maglev is the lookup table (indexes into Backends) when Algorithm
	// is AlgMaglev; its length must be the datapath's Maglev size.
	Maglev []int32
	// Keep are the backends, besides Backends, whose live NodePort flows
	// keep their translation: those the service still lists in another
	// state (terminating, maintenance, on a dead node). A translation to
	// any other backend is deleted, both halves.
	Keep []LBBackend
}

func htons(p uint16) uint16 { return p<<8 | p>>8 }

type lbState struct {
	id    uint32
	slots int
	// members are the backends lb_members may hold for this frontend, by
	// ID; each holds one reference to its ID (backendIDs).
	members map[uint32]netip.AddrPort
	// keep are the backends whose NodePort flows live on (Backends and
	// Keep of the last write; after a restart, the members read back).
	keep     map[netip.AddrPort]bool
	nodePort bool
}

// lb is the datapath's shadow of what it wrote to the service maps.
type lb struct {
	services map[Frontend]*lbState
	nextSvc  uint32
	// backendIDs: the ID of each backend some frontend has as a member,
	// and how many do; an ID names one backend (restoreBackendID). An ID no frontend has is freed (freeBE) and handed
	// out again before a new one (nextBE), so IDs stay as many as the
	// backends written now (TestBackendIDsOfGoneBackendsFreed).
	backendIDs map[netip.AddrPort]*backendRef
	freeBE     []uint32
	freeRanges []idRange // the gaps between the IDs in use at a restart
	nextBE     uint32
}

// idRange is the IDs from up to, not including, to.
type idRange struct{ from, to uint32 }

// backendRef is a backend's ID and the number of frontends that have it
// as a member.
type backendRef struct {
	id   uint32
	refs int
}

// ErrMaglevSize: a Maglev table does not match the loaded table size.
var ErrMaglevSize = errors.New("maglev table size mismatch")

// ErrTooManyBackends: a frontend has more backends than the datapath's
// 16-bit count holds.
var ErrTooManyBackends = errors.New("too many backends")

func (d *Datapath) lbInit() error {
	d.lb = lb{services: map[Frontend]*lbState{}, nextSvc: 1, backendIDs: map[netip.AddrPort]*backendRef{}, nextBE: 1}
	// Keep the IDs of frontends written by an earlier agent so their
	// affinity entries stay meaningful; stale ones go in ReconcileServices.
	var k bpf.DatapathLbKey
	var v bpf.DatapathLbService
	byID := map[uint32]*lbState{}
	it := d.objs.LbServices.Iterate()
	for it.Next(&k, &v) {
		fe := Frontend{IP: addrFrom(k.Vip), Port: htons(k.Port), Proto: k.Proto}
		st := &lbState{id: v.Id, slots: int(v.Count), members: map[uint32]netip.AddrPort{}, keep: map[netip.AddrPort]bool{}, nodePort: v.Flags&lbFlagNodePort != 0}
		d.lb.services[fe], byID[v.Id] = st, st
		d.lb.nextSvc = max(d.lb.nextSvc, v.Id+1)
	}
	var mk bpf.DatapathLbMemberKey
	var b bpf.DatapathLbBackend
	var gone []bpf.DatapathLbMemberKey
	addrOf := map[uint32]netip.AddrPort{} // the one address each ID restored names
	mit := d.objs.LbMembers.Iterate()
	for mit.Next(&mk, &b) {
		st := byID[mk.Id]
		if st == nil {
			gone = append(gone, mk)
			continue
		}
		ap := netip.AddrPortFrom(addrFrom(b.Ip), htons(b.Port))
		st.keep[ap] = true
		if !d.lb.restoreBackendID(addrOf, ap, mk.Backend) {
			gone = append(gone, mk)
			continue
		}
		st.members[mk.Backend] = ap
	}
	// Members of no frontend (an agent stopped inside DeleteService) are
	// read by no program; gone, their IDs may be handed out again. So are
	// members in conflict with those restored (restoreBackendID).
	for _, k := range gone {
		d.objs.LbMembers.Delete(&k)
	}
	d.lb.freeUnusedBackendIDs()
	return errors.Join(it.Err(), mit.Err())
}

// restoreBackendID counts a member read back from lb_members, unless it
// conflicts with those counted before: an ID names one address and an
// address has one ID, over every frontend (addrOf: the address of each ID
// counted). A member in conflict (a map written inconsistently) is not
// counted, and lbInit deletes it: its frontend's slots may still name the
// backend under that ID, but the checks that read lb_members (affinity,
// the socket programs' reverse translation) then find no member there,
// until the service manager, which writes every frontend of a new agent
// once, writes it again under an ID of its own. The review of c08a78b
// found that the IDs were counted per address: one ID under two
// addresses was freed when either went, while the other frontend still
// had its address under it, and handed to a new backend (or, both gone,
// put on the free list twice and handed to two); an address under two IDs
// was counted twice under the first for good and the second ID leaked
// (TestRestoredConflictingMembersNotReused).
func (l *lb) restoreBackendID(addrOf map[uint32]netip.AddrPort, ap netip.AddrPort, id uint32) bool {
	if other, ok := addrOf[id]; ok && other != ap {
		return false
	}
	ref := l.backendIDs[ap]
	if ref != nil && ref.id != id {
		return false
	}
	if ref == nil {
		ref = &backendRef{id: id}
		l.backendIDs[ap] = ref
		addrOf[id] = ap
	}
	ref.refs++
	l.nextBE = max(l.nextBE, id+1)
	return true
}

// freeUnusedBackendIDs frees the IDs below nextBE that no member of a
// frontend has (after a restart), as ranges between the IDs in use: as
// many as those, however high an older agent's counter went.
func (l *lb) freeUnusedBackendIDs() {
	var used []uint32
	for _, st := range l.services {
		for id := range st.members {
			used = append(used, id)
		}
	}
	slices.Sort(used)
	prev := uint32(0)
	for _, id := range used {
		if id > prev+1 {
			l.freeRanges = append(l.freeRanges, idRange{from: prev + 1, to: id})
		}
		prev = id
	}
}

// holdBackend makes ap a member of st: its ID, taken from the free list
// or new when no frontend has ap yet, gains a reference unless st has it
// already.
func (l *lb) holdBackend(st *lbState, ap netip.AddrPort) uint32 {
	ref := l.backendIDs[ap]
	if ref != nil && st.members[ref.id] == ap {
		return ref.id
	}
	if ref == nil {
		ref = &backendRef{id: l.newBackendID()}
		l.backendIDs[ap] = ref
	}
	ref.refs++
	st.members[ref.id] = ap
	return ref.id
}

// newBackendID is the last freed ID, else one of a free range, else the
// next never used.
func (l *lb) newBackendID() uint32 {
	if n := len(l.freeBE); n > 0 {
		id := l.freeBE[n-1]
		l.freeBE = l.freeBE[:n-1]
		return id
	}
	if n := len(l.freeRanges); n > 0 {
		r := &l.freeRanges[n-1]
		id := r.from
		if r.from++; r.from == r.to {
			l.freeRanges = l.freeRanges[:n-1]
		}
		return id
	}
	id := l.nextBE
	l.nextBE++
	return id
}

// releaseBackend drops st's member id (its lb_members entry deleted
// already); the ID is freed when no frontend has it any more.
func (l *lb) releaseBackend(st *lbState, id uint32) {
	ap, ok := st.members[id]
	if !ok {
		return
	}
	delete(st.members, id)
	ref := l.backendIDs[ap]
	if ref == nil || ref.id != id {
		return
	}
	if ref.refs--; ref.refs <= 0 {
		delete(l.backendIDs, ap)
		l.freeBE = append(l.freeBE, id)
	}
}

// UpsertService writes one frontend and its backends. New slots are
// written before the count that exposes them, and slots beyond the new
// count are removed after it, so the programs never see a hole.
func (d *Datapath) UpsertService(fe Frontend, s LBService) error {
	if s.Algorithm == AlgMaglev && len(s.Backends) > 0 && uint32(len(s.Maglev)) != d.maglevSize {
		return fmt.Errorf("%w: %s has %d slots, the datapath %d", ErrMaglevSize, fe, len(s.Maglev), d.maglevSize)
	}
	if len(s.Backends) > math.MaxUint16 {
		// The count is 16 bits: more would wrap (service.Select bounds them).
		return fmt.Errorf("%w: %s has %d backends, at most %d", ErrTooManyBackends, fe, len(s.Backends), math.MaxUint16)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	st, ok := d.lb.services[fe]
	if !ok {
		st = &lbState{id: d.lb.nextSvc, members: map[uint32]netip.AddrPort{}}
		d.lb.nextSvc++
		d.lb.services[fe] = st
	}
	keep := map[netip.AddrPort]bool{}
	for _, b := range slices.Concat(s.Backends, s.Keep) {
		keep[netip.AddrPortFrom(b.IP, b.Port)] = true
	}
	// st.members gains each backend before its entry is written, so that
	// one written before a failure is deleted by the next write.
	members := map[uint32]bool{}
	for i, b := range s.Backends {
		id := d.lb.holdBackend(st, netip.AddrPortFrom(b.IP, b.Port))
		v := bpf.DatapathLbBackend{Ip: ipv4(b.IP), Port: htons(b.Port), Id: id}
		sk := bpf.DatapathLbSlotKey{Id: st.id, Slot: uint32(i + 1)}
		if err := d.objs.LbSlots.Put(&sk, &v); err != nil {
			return fmt.Errorf("lb slots: %s slot %d: %w", fe, i+1, err)
		}
		mk := bpf.DatapathLbMemberKey{Id: st.id, Backend: id}
		if err := d.objs.LbMembers.Put(&mk, &v); err != nil {
			return fmt.Errorf("lb members: %s: %w", fe, err)
		}
		members[id] = true
	}
	if s.Algorithm == AlgMaglev && len(s.Backends) > 0 {
		table := make([]uint32, len(s.Maglev))
		for i, idx := range s.Maglev {
			table[i] = uint32(idx) + 1
		}
		if err := d.objs.LbMaglev.Put(&st.id, table); err != nil {
			return fmt.Errorf("lb maglev: %s: %w", fe, err)
		}
	}
	v := bpf.DatapathLbService{Id: st.id, Count: uint16(len(s.Backends)), Alg: uint8(s.Algorithm), AffinityTimeout: s.AffinityTimeout}
	if s.AffinityTimeout > 0 {
		v.Flags |= lbFlagAffinity
	}
	if s.NodePort {
		v.Flags |= lbFlagNodePort
	}
	k := fe.key()
	if err := d.objs.LbServices.Put(&k, &v); err != nil {
		return fmt.Errorf("lb services: %s: %w", fe, err)
	}
	for slot := len(s.Backends) + 1; slot <= st.slots; slot++ {
		sk := bpf.DatapathLbSlotKey{Id: st.id, Slot: uint32(slot)}
		d.objs.LbSlots.Delete(&sk)
	}
	for id := range st.members {
		if !members[id] {
			mk := bpf.DatapathLbMemberKey{Id: st.id, Backend: id}
			d.objs.LbMembers.Delete(&mk)
			d.lb.releaseBackend(st, id)
		}
	}
	if s.Algorithm != AlgMaglev || len(s.Backends) == 0 {
		d.objs.LbMaglev.Delete(&st.id)
	}
	gone := map[netip.AddrPort]bool{}
	for ap := range st.keep {
		if !keep[ap] {
			gone[ap] = true
		}
	}
	wasNodePort := st.nodePort
	st.slots, st.keep, st.nodePort = len(s.Backends), keep, s.NodePort
	if len(gone) > 0 && (wasNodePort || s.NodePort) {
		// After the slots: no new flow picks them any more.
		d.forget.queue(d, fe, gone)
	}
	return nil
}

// forgetter deletes, in a goroutine of its own, the NodePort translations
// of backends a service no longer lists (UpsertService) and of frontends
// gone (DeleteService): a backend the service no longer lists may be gone,
// its address given to another pod, which would receive the flow's
// packets and answer as the service. Until 2026-12-06 they lived on while
// their client kept sending
// (TestNodePortTranslationsOfGoneBackendsForgotten). One walk of lb_nats
// serves every change queued meanwhile, without the datapath's or the
// service manager's locks held; a failed walk is tried again a second
// later.
type forgetter struct {
	walk sync.Mutex // held for a whole ForgetPendingFlows
	mu   sync.Mutex
	// pending: per frontend, the backends whose flows go (nil: all).
	pending map[Frontend]map[netip.AddrPort]bool
	w       worker
}

// queue adds fe's backends gone (nil: all its flows) and wakes the walk.
func (f *forgetter) queue(d *Datapath, fe Frontend, gone map[netip.AddrPort]bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.pending == nil {
		f.pending = map[Frontend]map[netip.AddrPort]bool{}
	}
	f.merge(fe, gone)
	f.w.wake(d.closed, 0, "NodePort translations of gone backends", d.ForgetPendingFlows)
}

// merge adds gone to fe's pending set; f.mu held.
func (f *forgetter) merge(fe Frontend, gone map[netip.AddrPort]bool) {
	cur, ok := f.pending[fe]
	switch {
	case ok && cur == nil: // all already
	case gone == nil:
		f.pending[fe] = nil
	default:
		if cur == nil {
			cur = map[netip.AddrPort]bool{}
			f.pending[fe] = cur
		}
		maps.Copy(cur, gone)
	}
}

// ForgetPendingFlows runs the queued deletions now (the forgetter's
// goroutine; tests), after any walk under way. What could not be done
// stays queued.
func (d *Datapath) ForgetPendingFlows() error {
	f := &d.forget
	f.walk.Lock()
	defer f.walk.Unlock()
	if d.isClosed() {
		return nil
	}
	f.mu.Lock()
	pending := f.pending
	f.pending = nil
	f.mu.Unlock()
	if len(pending) == 0 {
		return nil
	}
	err := d.forgetFlows(pending)
	if err != nil {
		f.mu.Lock()
		if f.pending == nil {
			f.pending = map[Frontend]map[netip.AddrPort]bool{}
		}
		for fe, gone := range pending {
			f.merge(fe, gone)
		}
		f.mu.Unlock()
	}
	return err
}

// keeps says whether frontend fe, as written now, keeps backend b's flows.
func (d *Datapath) keeps(fe Frontend, b netip.AddrPort) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	st, ok := d.lb.services[fe]
	return ok && st.keep[b]
}

// forgetFlows deletes, in one walk of the translation tables (natTables),
// the translations of each frontend of pending to its backends there (all
// of them for nil): the forward entry (the client's tuple) and its
// reverse one, in either table, when it points back at it (lb_nat_lookup's
// own check: an expired flow's reverse key may be another live flow's
// now, of this or another frontend).
func (d *Datapath) forgetFlows(pending map[Frontend]map[netip.AddrPort]bool) error {
	match := func(k *bpf.DatapathLbNatKey, v *bpf.DatapathLbNat) bool {
		if v.Reverse != 0 {
			return false
		}
		fe := Frontend{IP: addrFrom(k.Daddr), Port: htons(k.Dport), Proto: k.Proto}
		gone, ok := pending[fe]
		return ok && (gone == nil || gone[netip.AddrPortFrom(addrFrom(v.Daddr), htons(v.Dport))])
	}
	var fwd []bpf.DatapathLbNatKey
	for _, m := range d.natTables() {
		err := eachEntry(m, func(k *bpf.DatapathLbNatKey, v *bpf.DatapathLbNat) {
			if match(k, v) {
				fwd = append(fwd, *k)
			}
		})
		if err != nil {
			return err
		}
	}
	var v, rv bpf.DatapathLbNat
	for i := range fwd {
		fk := &fwd[i]
		for _, m := range d.natTables() {
			// Looked up again: the tuple may have become a new flow's
			// since, to a backend that stays; and the backend may be the
			// frontend's again (a readiness flap, a frontend made again)
			// since it was queued.
			if err := m.Lookup(fk, &v); err != nil || !match(fk, &v) {
				continue
			}
			if d.keeps(Frontend{IP: addrFrom(fk.Daddr), Port: htons(fk.Dport), Proto: fk.Proto}, netip.AddrPortFrom(addrFrom(v.Daddr), htons(v.Dport))) {
				continue
			}
			rk := bpf.DatapathLbNatKey{Saddr: v.Daddr, Daddr: v.Saddr, Sport: v.Dport, Dport: v.Sport, Proto: fk.Proto}
			if err := m.Delete(fk); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return err
			}
			for _, rm := range d.natTables() {
				if err := rm.Lookup(&rk, &rv); err != nil || rv.Reverse != 1 ||
					rv.Saddr != fk.Daddr || rv.Daddr != fk.Saddr || rv.Sport != fk.Dport || rv.Dport != fk.Sport {
					continue
				}
				if err := rm.Delete(&rk); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
					return err
				}
			}
		}
	}
	return nil
}

// DeleteService removes a frontend; absent is not an error.
func (d *Datapath) DeleteService(fe Frontend) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	st, ok := d.lb.services[fe]
	if !ok {
		return nil
	}
	k := fe.key()
	if err := d.objs.LbServices.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("lb services: delete %s: %w", fe, err)
	}
	for slot := 1; slot <= st.slots; slot++ {
		sk := bpf.DatapathLbSlotKey{Id: st.id, Slot: uint32(slot)}
		d.objs.LbSlots.Delete(&sk)
	}
	for id := range st.members {
		mk := bpf.DatapathLbMemberKey{Id: st.id, Backend: id}
		d.objs.LbMembers.Delete(&mk)
		d.lb.releaseBackend(st, id)
	}
	d.objs.LbMaglev.Delete(&st.id)
	delete(d.lb.services, fe)
	if st.nodePort {
		d.forget.queue(d, fe, nil)
	}
	return nil
}

// Frontends lists the frontends written to the datapath.
func (d *Datapath) Frontends() []Frontend {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]Frontend, 0, len(d.lb.services))
	for fe := range d.lb.services {
		out = append(out, fe)
	}
	slices.SortFunc(out, func(a, b Frontend) int {
		return cmp.Or(a.IP.Compare(b.IP), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Proto, b.Proto))
	})
	return out
}

// ServiceBackends reads back the slots of a frontend (tests, status).
func (d *Datapath) ServiceBackends(fe Frontend) ([]netip.AddrPort, error) {
	k := fe.key()
	var v bpf.DatapathLbService
	if err := d.objs.LbServices.Lookup(&k, &v); err != nil {
		return nil, fmt.Errorf("lb services: %s: %w", fe, err)
	}
	var out []netip.AddrPort
	for slot := uint32(1); slot <= uint32(v.Count); slot++ {
		var b bpf.DatapathLbBackend
		sk := bpf.DatapathLbSlotKey{Id: v.Id, Slot: slot}
		if err := d.objs.LbSlots.Lookup(&sk, &b); err != nil {
			return nil, fmt.Errorf("lb slots: %s slot %d: %w", fe, slot, err)
		}
		out = append(out, netip.AddrPortFrom(addrFrom(b.Ip), htons(b.Port)))
	}
	return out, nil
}

// MaglevSize is the Maglev table size the programs were loaded with.
func (d *Datapath) MaglevSize() uint32 { return d.maglevSize }

// RegisterNetNS lets the socket programs translate in the network
// namespace with this cookie: a pod of this node (pod is its address,
// with which they name the client of the translations they report), or
// the node itself (pod is the zero Addr).
func (d *Datapath) RegisterNetNS(cookie uint64, pod netip.Addr) error {
	var v uint32
	if pod.Is4() {
		v = ipv4(pod)
	}
	if err := d.objs.LbNetns.Put(&cookie, &v); err != nil {
		return fmt.Errorf("lb netns: %w", err)
	}
	return nil
}

// UnregisterNetNS forgets a namespace cookie.
func (d *Datapath) UnregisterNetNS(cookie uint64) {
	d.objs.LbNetns.Delete(&cookie)
}

// NetNSCookie returns the cookie of the calling thread's network namespace.
func NetNSCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("SO_NETNS_COOKIE: %w", err)
	}
	return c, nil
}

// ErrCgroup2: no cgroup v2 hierarchy to attach the socket programs to.
var ErrCgroup2 = errors.New("cgroup v2 unavailable")

// DefaultCgroupRoot is where the agent mounts cgroup v2 when the node has
// no mount of it (as under `ip netns exec`, which remounts /sys).
const DefaultCgroupRoot = "/run/filament/cgroupv2"

const cgroup2Magic = 0x63677270

// EnsureCgroup2 returns a cgroup v2 mount point: path when given (mounting
// cgroup2 there if it is not one yet), else an existing mount, else one
// made at DefaultCgroupRoot.
func EnsureCgroup2(path string) (string, error) {
	if path == "" {
		if data, err := os.ReadFile("/proc/self/mounts"); err == nil {
			for _, line := range strings.Split(string(data), "\n") {
				f := strings.Fields(line)
				if len(f) >= 3 && f[2] == "cgroup2" {
					return f[1], nil
				}
			}
		}
		path = DefaultCgroupRoot
	}
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err == nil && st.Type == cgroup2Magic {
		return path, nil
	}
	if err := os.MkdirAll(path, 0o755); err != nil {
		return "", fmt.Errorf("%w: %s: %v", ErrCgroup2, path, err)
	}
	if err := unix.Mount("none", path, "cgroup2", 0, ""); err != nil {
		return "", fmt.Errorf("%w: mount cgroup2 on %s: %v", ErrCgroup2, path, err)
	}
	return path, nil
}

// AttachSocketLB attaches the socket programs (connect4, sendmsg4,
// recvmsg4, getpeername4, and their IPv6 twins for dual-stack sockets'
// v4-mapped addresses) to the cgroup at path with pinned links; a
// restarted agent swaps the programs in place.
func (d *Datapath) AttachSocketLB(cgroupPath string) error {
	dir := filepath.Join(d.pinDir, "cgroup")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, a := range []struct {
		name string
		prog *ebpf.Program
		typ  ebpf.AttachType
	}{
		{"connect4", d.objs.SockConnect4, ebpf.AttachCGroupInet4Connect},
		{"sendmsg4", d.objs.SockSendmsg4, ebpf.AttachCGroupUDP4Sendmsg},
		{"recvmsg4", d.objs.SockRecvmsg4, ebpf.AttachCGroupUDP4Recvmsg},
		{"getpeername4", d.objs.SockGetpeername4, ebpf.AttachCgroupInet4GetPeername},
		{"connect6", d.objs.SockConnect6, ebpf.AttachCGroupInet6Connect},
		{"sendmsg6", d.objs.SockSendmsg6, ebpf.AttachCGroupUDP6Sendmsg},
		{"recvmsg6", d.objs.SockRecvmsg6, ebpf.AttachCGroupUDP6Recvmsg},
		{"getpeername6", d.objs.SockGetpeername6, ebpf.AttachCgroupInet6GetPeername},
	} {
		pin := filepath.Join(dir, a.name)
		if old, err := link.LoadPinnedLink(pin, nil); err == nil {
			err := old.Update(a.prog)
			old.Close()
			if err == nil {
				continue
			}
			os.Remove(pin)
		}
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroupPath, Attach: a.typ, Program: a.prog})
		if err != nil {
			return fmt.Errorf("attach %s to cgroup %s: %w", a.name, cgroupPath, err)
		}
		if err := l.Pin(pin); err != nil {
			l.Close()
			return fmt.Errorf("pin %s: %w", a.name, err)
		}
		l.Close()
	}
	return nil
}

// AttachNetdev puts from_netdev (NodePort translation) on the tc ingress
// of the node's underlay device.
func (d *Datapath) AttachNetdev(ifName string, ifIndex int) (Attachment, error) {
	return d.attachNodeDev(ifName, ifIndex, d.objs.FromNetdev, "from_netdev")
}
