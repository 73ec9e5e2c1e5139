package datapath

import (
	"encoding/binary"
	"errors"
	"log/slog"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/filament-net/filament/bpf"
)

// NodePort translations (lb_nats) of an agent from before 2026-12-05 have a
// 32-byte value: the same fields up to the last, which was "expect" (the
// number the other side last acknowledged, network order). Those values
// grew by the TCP numbers lb_nat_tcp keeps; an upgrade copies the live
// translations into the new map instead of dropping them (their flows'
// connections would break at the next packet).
const oldLBNatValueSize = 32

// lbNatValueSize is the current layout's (40 bytes).
var lbNatValueSize = binary.Size(bpf.DatapathLbNat{})

// convertOldLBNat returns the value of the current layout for v, an lb_nats
// value of the old layout: "expect" becomes acked (host order); the flags
// byte keeps its FIN bits and knows neither side's numbers, so the
// datapath takes them from each side's next segment.
func convertOldLBNat(v []byte) ([]byte, error) {
	if len(v) != oldLBNatValueSize {
		return nil, errors.New("not an old lb_nats value")
	}
	out := make([]byte, lbNatValueSize)
	copy(out, v[:28])
	out[26] &= 3 // LB_NAT_FIN_CLIENT | LB_NAT_FIN_BACKEND
	binary.NativeEndian.PutUint32(out[28:], binary.BigEndian.Uint32(v[28:32]))
	return out, nil
}

// oldLBNats opens the pinned lb_nats of dir when it has the old layout
// (nil otherwise); the caller copies it with migrateLBNats once the new
// map is loaded, and closes it.
func oldLBNats(dir string) *ebpf.Map {
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, "lb_nats"), nil)
	if err != nil {
		return nil
	}
	if m.ValueSize() != oldLBNatValueSize {
		m.Close()
		return nil
	}
	return m
}

// migrateLBNats copies old's entries (the old layout) into m (the new).
func migrateLBNats(old, m *ebpf.Map) {
	var k, v []byte
	n, failed := 0, 0
	it := old.Iterate()
	for it.Next(&k, &v) {
		nv, err := convertOldLBNat(v)
		if err == nil {
			err = m.Put(k, nv)
		}
		if err != nil {
			failed++
			continue
		}
		n++
	}
	if err := it.Err(); err != nil {
		slog.Warn("NodePort translations of the earlier agent: reading them stopped", "err", err)
	}
	slog.Info("NodePort translations of the earlier agent copied to the new layout", "copied", n, "failed", failed)
}

// oldResized opens the pinned map name of dir when only its size differs
// from spec's (nil otherwise): its entries are copied into the new map
// with copyEntries once it is loaded. The nodes map grew from 16,384 to
// 65,536 on 2026-12-05; without the copy the known nodes' tunnelled
// traffic was dropped until the agent learned them again
// (TestOldNodesMapKept).
func oldResized(dir, name string, spec *ebpf.CollectionSpec) *ebpf.Map {
	ms, ok := spec.Maps[name]
	if !ok {
		return nil
	}
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
	if err != nil {
		return nil
	}
	if m.Type() != ms.Type || m.KeySize() != ms.KeySize || m.ValueSize() != ms.ValueSize || m.MaxEntries() == ms.MaxEntries {
		m.Close()
		return nil
	}
	return m
}

// copyEntries copies old's entries into m, as many as fit.
func copyEntries(name string, old, m *ebpf.Map) {
	var k, v []byte
	n, failed := 0, 0
	it := old.Iterate()
	for it.Next(&k, &v) {
		if err := m.Put(k, v); err != nil {
			failed++
			continue
		}
		n++
	}
	slog.Info("pinned map resized: entries kept", "map", name, "kept", n, "failed", failed)
}
