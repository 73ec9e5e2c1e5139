package datapath

import (
	"testing"

	"github.com/cilium/ebpf"
	"github.com/filament-net/filament/bpf"
	"github.com/filament-net/filament/internal/testutil"
)

// An entry that expired when the sweep listed it but was put anew before
// the sweep reached it (a NodePort translation taking an expired tuple
// over) stays; one still expired goes.
func TestSweepKeepsEntriesRenewedSinceListing(t *testing.T) {
	testutil.RequireRoot(t)
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 16, ValueSize: uint32(lbNatValueSize), MaxEntries: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	now := monotonicNow()
	renewed := bpf.DatapathLbNatKey{Saddr: 1, Daddr: 2, Sport: 3, Dport: 4, Proto: 6}
	stale := bpf.DatapathLbNatKey{Saddr: 1, Daddr: 2, Sport: 3, Dport: 5, Proto: 6}
	for _, k := range []bpf.DatapathLbNatKey{renewed, stale} {
		if err := m.Put(&k, &bpf.DatapathLbNat{Expires: now - 1}); err != nil {
			t.Fatal(err)
		}
	}
	var v bpf.DatapathLbNat
	expires := func(v *bpf.DatapathLbNat) uint64 { return v.Expires }
	keys, err := listExpired[bpf.DatapathLbNatKey](m, expires, now)
	if err != nil || len(keys) != 2 {
		t.Fatalf("listed %d expired (%v), want 2", len(keys), err)
	}
	if err := m.Put(&renewed, &bpf.DatapathLbNat{Expires: now + 60e9}); err != nil {
		t.Fatal(err)
	}
	n, err := deleteExpired(m, keys, expires, now)
	if err != nil || n != 1 {
		t.Fatalf("deleted %d (%v), want 1", n, err)
	}
	if m.Lookup(&renewed, &v) != nil || m.Lookup(&stale, &v) == nil {
		t.Fatal("the sweep deleted the renewed entry or kept the stale one")
	}
}
