package datapath

import (
	"testing"

	"github.com/cilium/ebpf"
)

// An earlier agent's nodes map (16,384 entries until 2026-12-05) is
// replaced by the larger one with its entries, so tunnelled traffic from
// the known nodes is not dropped while the new agent learns them again.
// Found rereading the change that grew the map.
func TestOldNodesMapKept(t *testing.T) {
	k, v := uint32(0x0200001e), uint32(1)
	dp2 := upgradeFrom(t, "nodes", &ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 16384},
		func(old *ebpf.Map) error { return old.Put(&k, &v) })
	if got := dp2.Objects().Nodes.MaxEntries(); got != 65536 {
		t.Fatalf("nodes map of %d entries after the upgrade, want 65536", got)
	}
	var got uint32
	if err := dp2.Objects().Nodes.Lookup(&k, &got); err != nil || got != v {
		t.Fatalf("the earlier agent's node after the upgrade: %d, %v", got, err)
	}
}
