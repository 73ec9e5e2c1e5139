package datapath

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/filament-net/filament/agent/service/maglev"
	"github.com/filament-net/filament/bpf"
	"github.com/filament-net/filament/internal/testutil"
)

// oldLBNat is an lb_nats value of an agent from before 2026-12-05.
func oldLBNat(expires uint64, reverse, state, fin, path uint8, expect uint32) []byte {
	v := make([]byte, oldLBNatValueSize)
	binary.NativeEndian.PutUint64(v, expires)
	binary.NativeEndian.PutUint32(v[8:], 0x0a000001)
	binary.NativeEndian.PutUint32(v[12:], 0x0a000002)
	binary.NativeEndian.PutUint16(v[16:], 0x1f90)
	binary.NativeEndian.PutUint16(v[18:], 0x9c40)
	binary.NativeEndian.PutUint32(v[20:], 0x0a000003)
	v[24], v[25], v[26], v[27] = reverse, state, fin, path
	binary.BigEndian.PutUint32(v[28:], expect)
	return v
}

func TestConvertOldLBNat(t *testing.T) {
	nv, err := convertOldLBNat(oldLBNat(1<<40, 1, 1, 2, 1, 0x01020304))
	if err != nil {
		t.Fatal(err)
	}
	var got bpf.DatapathLbNat
	if _, err := binary.Decode(nv, binary.NativeEndian, &got); err != nil {
		t.Fatal(err)
	}
	want := bpf.DatapathLbNat{Expires: 1 << 40, Saddr: 0x0a000001, Daddr: 0x0a000002, Sport: 0x1f90, Dport: 0x9c40, TunnelIp: 0x0a000003,
		Reverse: 1, State: 1, Flags: 2, Path: 1, Acked: 0x01020304}
	if got != want {
		t.Fatalf("converted %+v, want %+v", got, want)
	}
	if _, err := convertOldLBNat(make([]byte, lbNatValueSize)); err == nil {
		t.Fatal("a value of the current layout converted")
	}
}

// An agent upgraded over the change of lb_nats' layout copies the earlier
// agent's live NodePort translations instead of dropping them (their
// connections broke at their next packet).
// unpinnedAfterLoad loads the datapath once in a bpffs of its own, then
// removes the pin of map name (for a test to pin an earlier agent's map
// there); it returns the config to load again and the pin's path.
func unpinnedAfterLoad(t *testing.T, name string) (Config, string) {
	t.Helper()
	testutil.RequireRoot(t)
	root := t.TempDir()
	t.Cleanup(func() { unix.Unmount(root, unix.MNT_DETACH) })
	cfg := Config{BPFRoot: root, Node: "t", MaglevSize: maglev.DefaultSize}
	dp, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dp.Close()
	pin := filepath.Join(PinDir(root, "default", "t"), name)
	if err := os.Remove(pin); err != nil {
		t.Fatal(err)
	}
	return cfg, pin
}

// upgradeFrom loads the datapath over an earlier agent's map name, made
// from spec and filled by fill, pinned where the map goes; the returned
// datapath is closed when the test ends.
func upgradeFrom(t *testing.T, name string, spec *ebpf.MapSpec, fill func(*ebpf.Map) error) *Datapath {
	t.Helper()
	cfg, pin := unpinnedAfterLoad(t, name)
	old, err := ebpf.NewMap(spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := fill(old); err != nil {
		t.Fatal(err)
	}
	if err := old.Pin(pin); err != nil {
		t.Fatal(err)
	}
	old.Close()
	dp, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	return dp
}

func TestOldNodePortTranslationsKept(t *testing.T) {
	k := bpf.DatapathLbNatKey{Saddr: 0x0a000009, Daddr: 0x0a00000a, Sport: 1, Dport: 2, Proto: 6}
	dp2 := upgradeFrom(t, "lb_nats", &ebpf.MapSpec{Type: ebpf.LRUHash, KeySize: 16, ValueSize: oldLBNatValueSize, MaxEntries: 262144},
		func(old *ebpf.Map) error { return old.Put(&k, oldLBNat(1<<62, 0, 1, 1, 0, 4000)) })
	var v bpf.DatapathLbNat
	if err := dp2.Objects().LbNats.Lookup(&k, &v); err != nil {
		t.Fatalf("the earlier agent's translation after the upgrade: %v", err)
	}
	if v.Acked != 4000 || v.State != 1 || v.Flags != 1 || v.Expires != 1<<62 || v.TunnelIp != 0x0a000003 {
		t.Fatalf("the earlier agent's translation after the upgrade: %+v", v)
	}
}
