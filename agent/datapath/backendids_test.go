package datapath

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/filament-net/filament/agent/service/maglev"
	"github.com/filament-net/filament/bpf"
	"github.com/filament-net/filament/internal/testutil"
)

// loadAt loads the datapath with its pins under root (a restart loads
// again at the same root); the caller unmounts root.
func loadAt(t *testing.T, root string) *Datapath {
	t.Helper()
	testutil.RequireRoot(t)
	d, err := Load(Config{BPFRoot: root, Node: "t", MaglevSize: maglev.DefaultSize})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// loadRestartable loads the datapath under a root of its own, unmounted
// when the test ends; loadAt(t, root) loads it there again (a restart).
func loadRestartable(t *testing.T) (*Datapath, string) {
	t.Helper()
	testutil.RequireRoot(t)
	root := t.TempDir()
	t.Cleanup(func() { unix.Unmount(root, unix.MNT_DETACH) })
	return loadAt(t, root), root
}

var idsFE = Frontend{IP: netip.MustParseAddr("172.16.0.1"), Port: 80, Proto: unix.IPPROTO_TCP}

// memberIDs reads the backend IDs lb_members holds.
func memberIDs(t *testing.T, d *Datapath) map[uint32]bool {
	t.Helper()
	ids := map[uint32]bool{}
	var k bpf.DatapathLbMemberKey
	var v bpf.DatapathLbBackend
	it := d.objs.LbMembers.Iterate()
	for it.Next(&k, &v) {
		ids[v.Id] = true
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return ids
}

// A frontend whose 100 backends change port 200 times (a tenant patching
// targetPort in a loop) holds 100 backend IDs, reused, all below 200;
// after a restart the same; once the frontend goes, none. Until
// 2026-12-07 every IP:port ever written kept its ID for the agent's life
// and the 32-bit counter only grew.
func TestBackendIDsOfGoneBackendsFreed(t *testing.T) {
	d, root := loadRestartable(t)
	fe := idsFE
	write := func(d *Datapath, port uint16) {
		t.Helper()
		var s LBService
		for i := range 100 {
			s.Backends = append(s.Backends, LBBackend{IP: netip.AddrFrom4([4]byte{10, 1, 0, byte(i + 1)}), Port: port})
		}
		if err := d.UpsertService(fe, s); err != nil {
			t.Fatal(err)
		}
	}
	check := func(d *Datapath, want int) {
		t.Helper()
		if n := len(d.lb.backendIDs); n > want {
			t.Fatalf("%d backend IDs held, want at most %d", n, want)
		}
		ids := memberIDs(t, d)
		if len(ids) != want {
			t.Fatalf("lb_members has %d backend IDs, want %d", len(ids), want)
		}
		// A write takes its new backends' IDs before it frees its old
		// ones: two writes' worth at most.
		for id := range ids {
			if id < 1 || id > uint32(2*want) {
				t.Fatalf("backend ID %d in lb_members: not reused (want 1..%d)", id, 2*want)
			}
		}
	}
	for round := range 200 {
		write(d, uint16(1000+round))
	}
	check(d, 100)
	d.Close()

	d = loadAt(t, root)
	defer d.Close()
	check(d, 100)
	write(d, 5000)
	check(d, 100)
	if err := d.DeleteService(fe); err != nil {
		t.Fatal(err)
	}
	check(d, 0)

	// A backend two frontends have keeps its ID while either does.
	shared := LBBackend{IP: netip.MustParseAddr("10.1.0.1"), Port: 80}
	other := fe
	other.Port = 81
	for _, f := range []Frontend{fe, other} {
		if err := d.UpsertService(f, LBService{Backends: []LBBackend{shared}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.DeleteService(fe); err != nil {
		t.Fatal(err)
	}
	if err := d.UpsertService(fe, LBService{Backends: []LBBackend{{IP: netip.MustParseAddr("10.1.0.2"), Port: 80}}}); err != nil {
		t.Fatal(err)
	}
	if ids := memberIDs(t, d); len(ids) != 2 {
		t.Fatalf("a backend one frontend still has lost its ID to another: IDs %v", ids)
	}
}

// After a restart over an older agent's maps, whose counter went high
// (it never freed an ID), the IDs below the highest in use are handed out
// again, kept as ranges between the IDs in use (not one entry each).
func TestBackendIDsBelowAnOldAgentsCounterReused(t *testing.T) {
	d, root := loadRestartable(t)
	fe := idsFE
	a := LBBackend{IP: netip.MustParseAddr("10.1.0.1"), Port: 80}
	if err := d.UpsertService(fe, LBService{Backends: []LBBackend{a}}); err != nil {
		t.Fatal(err)
	}
	// As an older agent left it: the member under a high ID.
	const high = 4_000_000_000
	st := d.lb.services[fe]
	old := bpf.DatapathLbMemberKey{Id: st.id, Backend: 1}
	if err := d.objs.LbMembers.Delete(&old); err != nil {
		t.Fatal(err)
	}
	mk := bpf.DatapathLbMemberKey{Id: st.id, Backend: high}
	if err := d.objs.LbMembers.Put(&mk, &bpf.DatapathLbBackend{Ip: ipv4(a.IP), Port: htons(a.Port), Id: high}); err != nil {
		t.Fatal(err)
	}
	d.Close()

	d = loadAt(t, root)
	defer d.Close()
	if n := len(d.lb.freeRanges); n != 1 {
		t.Fatalf("%d free ranges, want 1 (below the one ID in use)", n)
	}
	other := fe
	other.Port = 81
	if err := d.UpsertService(other, LBService{Backends: []LBBackend{{IP: netip.MustParseAddr("10.1.0.2"), Port: 80}}}); err != nil {
		t.Fatal(err)
	}
	if ids := memberIDs(t, d); !ids[1] || !ids[high] {
		t.Errorf("backend IDs %v, want 1 (reused below the old counter) and %d", ids, uint32(high))
	}
}

// checkBackendIDs checks that the backend IDs are consistent: an ID names
// one address and an address has one ID over every frontend's members,
// each counted once per frontend that has it (none held for no member),
// no ID on the free list twice or while in use, lb_members as the shadow
// has it, and, when slots (every frontend written since the restart),
// each slot's ID names the slot's backend in its frontend's lb_members.
func checkBackendIDs(t *testing.T, d *Datapath, step string, slots bool) {
	t.Helper()
	addrOf := map[uint32]netip.AddrPort{}
	idOf := map[netip.AddrPort]uint32{}
	holders := map[netip.AddrPort]int{}
	bySvc := map[uint32]*lbState{}
	for _, st := range d.lb.services {
		bySvc[st.id] = st
		for id, ap := range st.members {
			if o, ok := addrOf[id]; ok && o != ap {
				t.Errorf("%s: backend ID %d names %s and %s", step, id, o, ap)
			}
			if o, ok := idOf[ap]; ok && o != id {
				t.Errorf("%s: backend %s has IDs %d and %d", step, ap, o, id)
			}
			addrOf[id], idOf[ap] = ap, id
			holders[ap]++
		}
	}
	for ap, n := range holders {
		ref := d.lb.backendIDs[ap]
		if ref == nil || ref.id != idOf[ap] || ref.refs != n {
			t.Errorf("%s: backend %s counted as %+v, want ID %d held by %d frontends", step, ap, ref, idOf[ap], n)
		}
	}
	for ap, ref := range d.lb.backendIDs {
		if holders[ap] == 0 {
			t.Errorf("%s: backend %s holds ID %d (%d references) but no frontend has it", step, ap, ref.id, ref.refs)
		}
	}
	free := map[uint32]bool{}
	isFree := func(id uint32) {
		if free[id] {
			t.Errorf("%s: backend ID %d on the free list twice", step, id)
		}
		if _, ok := addrOf[id]; ok {
			t.Errorf("%s: backend ID %d on the free list while %s has it", step, id, addrOf[id])
		}
		free[id] = true
	}
	for _, id := range d.lb.freeBE {
		isFree(id)
	}
	for _, r := range d.lb.freeRanges {
		for id := r.from; id < r.to; id++ {
			isFree(id)
		}
	}
	var k bpf.DatapathLbMemberKey
	var v bpf.DatapathLbBackend
	n := 0
	it := d.objs.LbMembers.Iterate()
	for it.Next(&k, &v) {
		n++
		ap := netip.AddrPortFrom(addrFrom(v.Ip), htons(v.Port))
		if st := bySvc[k.Id]; st == nil || st.members[k.Backend] != ap {
			t.Errorf("%s: lb_members (service %d, ID %d) = %s, not a member the agent knows", step, k.Id, k.Backend, ap)
		}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	want := 0
	for _, st := range d.lb.services {
		want += len(st.members)
	}
	if n != want {
		t.Errorf("%s: lb_members has %d entries, the agent knows %d", step, n, want)
	}
	if !slots {
		return
	}
	for fe, st := range d.lb.services {
		for slot := 1; slot <= st.slots; slot++ {
			var b, m bpf.DatapathLbBackend
			sk := bpf.DatapathLbSlotKey{Id: st.id, Slot: uint32(slot)}
			if err := d.objs.LbSlots.Lookup(&sk, &b); err != nil {
				t.Errorf("%s: %s slot %d: %v", step, fe, slot, err)
				continue
			}
			mk := bpf.DatapathLbMemberKey{Id: st.id, Backend: b.Id}
			if err := d.objs.LbMembers.Lookup(&mk, &m); err != nil || m.Ip != b.Ip || m.Port != b.Port {
				t.Errorf("%s: %s slot %d holds %s under ID %d, whose member there is %s (%v)", step, fe, slot,
					netip.AddrPortFrom(addrFrom(b.Ip), htons(b.Port)), b.Id, netip.AddrPortFrom(addrFrom(m.Ip), htons(m.Port)), err)
			}
		}
	}
}

// An agent restarted over an lb_members written inconsistently (one ID
// under two addresses in two frontends, or one address under two IDs)
// keeps one of each and deletes the members that conflict with it, which
// the service manager writes again anyway. The review of c08a78b found
// that the IDs were counted per address: a frontend dropping one address
// freed the ID while the other frontend still had the other address under
// it, and the next new backend was handed that ID (lb_members overwritten,
// the slot's backend left without a member; both dropped: the ID on the
// free list twice and handed to two backends); an address under two IDs
// was counted twice under one and never freed, the other ID leaked.
func TestRestoredConflictingMembersNotReused(t *testing.T) {
	fe1, fe2 := idsFE, idsFE
	fe2.Port = 81
	be := func(last byte) LBBackend {
		return LBBackend{IP: netip.AddrFrom4([4]byte{10, 1, 0, last}), Port: 80}
	}
	a, b, c, x := be(1), be(2), be(3), be(9)
	upsert := func(d *Datapath, fe Frontend, bs ...LBBackend) {
		t.Helper()
		if err := d.UpsertService(fe, LBService{Backends: bs}); err != nil {
			t.Fatal(err)
		}
	}
	// restartWith writes fe1 {a} (ID 1) and fe2 {x} (ID 2), then makes
	// fe2's one slot and member backend ap under ID id, as an inconsistent
	// agent might have, and restarts.
	restartWith := func(t *testing.T, ap LBBackend, id uint32) *Datapath {
		d, root := loadRestartable(t)
		upsert(d, fe1, a)
		upsert(d, fe2, x)
		st := d.lb.services[fe2]
		old := bpf.DatapathLbMemberKey{Id: st.id, Backend: d.lb.backendIDs[netip.AddrPortFrom(x.IP, x.Port)].id}
		if err := d.objs.LbMembers.Delete(&old); err != nil {
			t.Fatal(err)
		}
		v := bpf.DatapathLbBackend{Ip: ipv4(ap.IP), Port: htons(ap.Port), Id: id}
		mk := bpf.DatapathLbMemberKey{Id: st.id, Backend: id}
		sk := bpf.DatapathLbSlotKey{Id: st.id, Slot: 1}
		if err := d.objs.LbMembers.Put(&mk, &v); err != nil {
			t.Fatal(err)
		}
		if err := d.objs.LbSlots.Put(&sk, &v); err != nil {
			t.Fatal(err)
		}
		d.Close()
		d = loadAt(t, root)
		t.Cleanup(func() { d.Close() })
		return d
	}
	idA := uint32(1)

	// The restored frontend whose member was deleted still names its
	// backend under the ID in its slot until it is written again (as the
	// service manager does to every frontend after a restart).
	t.Run("one ID, two addresses", func(t *testing.T) {
		d := restartWith(t, b, idA) // fe1 {1: a}, fe2 {1: b}
		checkBackendIDs(t, d, "restored", false)
		upsert(d, fe1)
		checkBackendIDs(t, d, "fe1 drops a", false)
		upsert(d, fe2, b, c)
		checkBackendIDs(t, d, "fe2 gains c", true)
		upsert(d, fe2)
		checkBackendIDs(t, d, "fe2 drops both", true)
		upsert(d, fe1, be(4))
		upsert(d, fe2, be(5))
		checkBackendIDs(t, d, "new backends in both", true)
	})
	t.Run("one address, two IDs", func(t *testing.T) {
		d := restartWith(t, a, 2) // fe1 {1: a}, fe2 {2: a}
		checkBackendIDs(t, d, "restored", false)
		upsert(d, fe2, a)
		checkBackendIDs(t, d, "fe2 written again", false)
		upsert(d, fe1, a)
		checkBackendIDs(t, d, "fe1 written again", true)
		upsert(d, fe1)
		upsert(d, fe2)
		checkBackendIDs(t, d, "both drop a", true)
		if n := len(d.lb.backendIDs); n != 0 {
			t.Errorf("no frontend has a backend, yet %d backend IDs are held", n)
		}
		upsert(d, fe1, b)
		upsert(d, fe2, c)
		if ids := memberIDs(t, d); !ids[1] || !ids[2] {
			t.Errorf("backend IDs %v, want 1 and 2 (both freed and reused)", ids)
		}
		checkBackendIDs(t, d, "new backends in both", true)
	})
}
