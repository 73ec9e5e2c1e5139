package datapath

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/filament-net/filament/bpf"
)

// A backend queued as gone that is the frontend's again before the walk
// (a readiness flap, a frontend deleted and made again) keeps its flows:
// the walk asks the frontend as written now. Found 2026-12-06 by the
// change's second review (pending sets were taken as they were queued).
func TestForgetSparesABackendBackBeforeTheWalk(t *testing.T) {
	root := t.TempDir()
	d := loadAt(t, root)
	t.Cleanup(func() { d.Close(); unix.Unmount(root, unix.MNT_DETACH) })
	fe := Frontend{IP: netip.MustParseAddr("172.16.0.1"), Port: 30053, Proto: unix.IPPROTO_UDP}
	a := netip.MustParseAddrPort("10.1.0.1:53")
	if err := d.UpsertService(fe, LBService{NodePort: true, Backends: []LBBackend{{IP: a.Addr(), Port: a.Port()}}}); err != nil {
		t.Fatal(err)
	}
	client := netip.MustParseAddrPort("198.51.100.7:5000")
	fwd := bpf.DatapathLbNatKey{Saddr: ipv4(client.Addr()), Daddr: ipv4(fe.IP), Sport: htons(client.Port()), Dport: htons(fe.Port), Proto: fe.Proto}
	if err := d.objs.LbNats.Put(&fwd, &bpf.DatapathLbNat{Expires: 1 << 62, Saddr: ipv4(client.Addr()), Daddr: ipv4(a.Addr()), Sport: htons(client.Port()), Dport: htons(a.Port())}); err != nil {
		t.Fatal(err)
	}
	// Queued as gone (the write that dropped it), back before the walk.
	d.forget.mu.Lock()
	d.forget.pending = map[Frontend]map[netip.AddrPort]bool{fe: {a: true}}
	d.forget.mu.Unlock()
	if err := d.ForgetPendingFlows(); err != nil {
		t.Fatal(err)
	}
	var v bpf.DatapathLbNat
	if err := d.objs.LbNats.Lookup(&fwd, &v); err != nil {
		t.Fatalf("the flow of a backend the frontend has again was deleted: %v", err)
	}
	// Gone for real: deleted.
	if err := d.UpsertService(fe, LBService{NodePort: true}); err != nil {
		t.Fatal(err)
	}
	if err := d.ForgetPendingFlows(); err != nil {
		t.Fatal(err)
	}
	if err := d.objs.LbNats.Lookup(&fwd, &v); err == nil {
		t.Fatal("the flow of a backend gone stays")
	}
}
