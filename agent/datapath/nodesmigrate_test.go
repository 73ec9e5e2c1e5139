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
	cfg, pin := unpinnedAfterLoad(t, "nodes")
	old, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 16384})
	if err != nil {
		t.Fatal(err)
	}
	k, v := uint32(0x0200001e), uint32(1)
	if err := old.Put(&k, &v); err != nil {
		t.Fatal(err)
	}
	if err := old.Pin(pin); err != nil {
		t.Fatal(err)
	}
	old.Close()
	dp2, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer dp2.Close()
	if got := dp2.Objects().Nodes.MaxEntries(); got != 65536 {
		t.Fatalf("nodes map of %d entries after the upgrade, want 65536", got)
	}
	var got uint32
	if err := dp2.Objects().Nodes.Lookup(&k, &got); err != nil || got != v {
		t.Fatalf("the earlier agent's node after the upgrade: %d, %v", got, err)
	}
}
