package datapath_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/filament-net/filament/agent/datapath"
	"github.com/filament-net/filament/agent/service/maglev"
	"github.com/filament-net/filament/bpf"
	"github.com/filament-net/filament/internal/testutil"
)

// A new agent whose programs changed one map (here: counters, as a new
// drop reason does) replaces that pin only: the conntrack entries of
// established flows, and every other pinned map, stay. Except for the
// revision map, whose replacement takes conntrack with it.
func TestIncompatiblePinReplacedAlone(t *testing.T) {
	testutil.RequireRoot(t)
	root := t.TempDir()
	defer unix.Unmount(root, unix.MNT_DETACH)
	cfg := datapath.Config{BPFRoot: root, Node: "t", MaglevSize: maglev.DefaultSize}
	dp, err := datapath.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ck := bpf.DatapathCtKey{Saddr: 1, Daddr: 2, Sport: 3, Dport: 4, Proto: 6}
	if err := dp.Objects().Conntrack.Put(&ck, &bpf.DatapathCtEntry{Expires: 1 << 62}); err != nil {
		t.Fatal(err)
	}
	dp.Close()
	pins, err := filepath.Glob(filepath.Join(root, "filament", "*", "t", "counters"))
	if err != nil || len(pins) != 1 {
		t.Fatalf("pinned counters: %v %v", pins, err)
	}
	// The counters of an older build: one entry fewer.
	if err := os.Remove(pins[0]); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 16, MaxEntries: 2})
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Pin(pins[0]); err != nil {
		t.Fatal(err)
	}
	old.Close()
	dp2, err := datapath.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var ce bpf.DatapathCtEntry
	if err := dp2.Objects().Conntrack.Lookup(&ck, &ce); err != nil {
		t.Fatalf("the conntrack entry did not survive the replacement of counters: %v", err)
	}
	info, err := dp2.Objects().Counters.Info()
	if err != nil || info.MaxEntries == 2 {
		t.Fatalf("counters not replaced: %+v %v", info, err)
	}
	dp2.Close()
	// A new revision map starts again from 0: the conntrack entries, which
	// carry the revision their policy was checked at, go with it.
	rev := filepath.Join(filepath.Dir(pins[0]), "revision")
	if err := os.Remove(rev); err != nil {
		t.Fatal(err)
	}
	oldRev, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 2})
	if err != nil {
		t.Fatal(err)
	}
	if err := oldRev.Pin(rev); err != nil {
		t.Fatal(err)
	}
	oldRev.Close()
	dp3, err := datapath.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer dp3.Close()
	if err := dp3.Objects().Conntrack.Lookup(&ck, &ce); err == nil {
		t.Fatal("a conntrack entry outlived the replacement of the revision map")
	}
}
