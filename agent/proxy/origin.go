package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// Origins tells the identity of a connection's source as the datapath knew
// it when it steered the connection to the proxy (the VNI of a flow from
// another node, a pod's own identity), by the connection's tuple.
//
// A connection's entry is read once, at accept, and removed. A datagram's
// is left in place: the datapath rewrites it for every datagram of the
// tuple, and several may be in flight before the proxy reads the first
// (glibc and musl send a name's A and AAAA queries from one socket at
// once); the map's LRU order retires it.
type Origins interface {
	Origin(src, dst netip.AddrPort, datagram bool) (identity uint32, ok bool)
}

// OriginMap reads the datapath's pinned proxy_origin map (bpf/lib/maps.h).
type OriginMap struct{ m *ebpf.Map }

// OpenOriginMap opens the pinned map at path.
func OpenOriginMap(path string) (*OriginMap, error) {
	m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: false})
	if err != nil {
		return nil, fmt.Errorf("proxy origin map %s: %w", path, err)
	}
	return &OriginMap{m}, nil
}

// originKey is struct proxy_origin_key: addresses and ports as they are in
// the packet (network order), read as host integers.
type originKey struct {
	Saddr, Daddr uint32
	Sport, Dport uint16
}

func keyOf(src, dst netip.AddrPort) (originKey, bool) {
	s, d := src.Addr().Unmap(), dst.Addr().Unmap()
	if !s.Is4() || !d.Is4() {
		return originKey{}, false
	}
	sb, db := s.As4(), d.As4()
	return originKey{
		Saddr: binary.NativeEndian.Uint32(sb[:]), Daddr: binary.NativeEndian.Uint32(db[:]),
		Sport: netOrder(src.Port()), Dport: netOrder(dst.Port()),
	}, true
}

func netOrder(port uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], port)
	return binary.NativeEndian.Uint16(b[:])
}

// Origin looks the tuple up, removing a connection's entry (see Origins).
func (o *OriginMap) Origin(src, dst netip.AddrPort, datagram bool) (uint32, bool) {
	k, ok := keyOf(src, dst)
	if !ok {
		return 0, false
	}
	var id uint32
	if datagram {
		return id, o.m.Lookup(&k, &id) == nil
	}
	err := o.m.LookupAndDelete(&k, &id) // one system call per connection
	if errors.Is(err, ebpf.ErrNotSupported) {
		if err = o.m.Lookup(&k, &id); err == nil {
			o.m.Delete(&k)
		}
	}
	return id, err == nil
}

// Close closes the map.
func (o *OriginMap) Close() error { return o.m.Close() }
