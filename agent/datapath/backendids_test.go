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
