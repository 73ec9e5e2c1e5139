package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// Frontends tells where a NodePort connection the datapath steered here
// untranslated was going: the backend it gave the connection, by the
// connection's tuple (the client, and the frontend the proxy's socket
// answers from). ok is false for every other connection.
type Frontends interface {
	Backend(src, frontend netip.AddrPort) (backend netip.AddrPort, ok bool)
}

// FrontendMap reads the datapath's pinned proxy_frontends map
// (bpf/lib/maps.h, written by from_netdev's nodeport_l7); an entry is
// read once and removed.
type FrontendMap struct{ m *ebpf.Map }

// OpenFrontendMap opens the pinned map at path.
func OpenFrontendMap(path string) (*FrontendMap, error) {
	m, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		return nil, fmt.Errorf("proxy frontends map %s: %w", path, err)
	}
	return &FrontendMap{m: m}, nil
}

// proxyBackend is struct proxy_backend: the address and port in network
// order, read as host integers (then the proxy's port and the time of
// the SYN, which the datapath uses).
type proxyBackend struct {
	Addr uint32
	Port uint16
	_    uint16
	_    uint64
}

// Backend looks the tuple up, removing its entry.
func (f *FrontendMap) Backend(src, frontend netip.AddrPort) (netip.AddrPort, bool) {
	k, ok := keyOf(src, frontend)
	if !ok {
		return netip.AddrPort{}, false
	}
	var b proxyBackend
	err := f.m.LookupAndDelete(&k, &b)
	if errors.Is(err, ebpf.ErrNotSupported) {
		if err = f.m.Lookup(&k, &b); err == nil {
			f.m.Delete(&k)
		}
	}
	if err != nil {
		return netip.AddrPort{}, false
	}
	return backendAddr(b), true
}

// backendAddr is b's address and port.
func backendAddr(b proxyBackend) netip.AddrPort {
	var a [4]byte
	binary.NativeEndian.PutUint32(a[:], b.Addr)
	var p [2]byte
	binary.NativeEndian.PutUint16(p[:], b.Port)
	return netip.AddrPortFrom(netip.AddrFrom4(a), binary.BigEndian.Uint16(p[:]))
}

// Close closes the map.
func (f *FrontendMap) Close() error { return f.m.Close() }
