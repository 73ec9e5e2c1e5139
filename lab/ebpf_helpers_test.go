package lab_test

import (
	"encoding/binary"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/filament-net/filament/bpf"
)

func ebpfLoadPinned(path string) (*ebpf.Map, error) { return ebpf.LoadPinnedMap(path, nil) }

func ipcKey(ip string, bits uint32) bpf.DatapathIpcacheKey {
	b := netip.MustParseAddr(ip).As4()
	return bpf.DatapathIpcacheKey{Prefixlen: bits, Ip: binary.NativeEndian.Uint32(b[:])}
}

func ipcPut(m *ebpf.Map, ip string, bits, id uint32) error {
	k := ipcKey(ip, bits)
	v := bpf.DatapathIpcacheValue{Identity: id}
	return m.Put(&k, &v)
}

func ipcHas(m *ebpf.Map, ip string, bits uint32) bool {
	k := ipcKey(ip, bits)
	var v bpf.DatapathIpcacheValue
	return m.Lookup(&k, &v) == nil
}

// ctNames says whether the conntrack tables hold an entry whose source or
// destination is ip.
func ctNames(tables []*ebpf.Map, ip string) bool {
	b := netip.MustParseAddr(ip).As4()
	a := binary.NativeEndian.Uint32(b[:])
	for _, m := range tables {
		var k bpf.DatapathCtKey
		var v bpf.DatapathCtEntry
		for it := m.Iterate(); it.Next(&k, &v); {
			if k.Saddr == a || k.Daddr == a {
				return true
			}
		}
	}
	return false
}
