package proxy

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/cilium/ebpf"
)

// Identities tells an address's identity as the datapath knows it now.
type Identities interface {
	Identity(addr netip.Addr) (id uint32, ok bool)
}

// IPCacheMap reads the datapath's pinned ipcache (an LPM trie,
// bpf/lib/maps.h struct ipcache_key and ipcache_value). The pin is looked
// at again every ipcacheRecheck: an agent upgrade that changes the map's
// layout pins a new map there, and the proxy, which outlives agent
// upgrades, would go on reading the old one.
type IPCacheMap struct {
	path string
	mu   sync.Mutex
	m    *ebpf.Map
	at   time.Time // when the pin was last looked at
}

const ipcacheRecheck = 10 * time.Second

type ipcacheKey struct {
	Prefixlen uint32
	IP        uint32 // network order, read as a host integer
}

type ipcacheValue struct {
	Identity uint32
	TunnelIP uint32
	Flags    uint8
	Pad      [3]uint8
}

func addrKey(a netip.Addr) uint32 {
	b := a.Unmap().As4()
	return binary.NativeEndian.Uint32(b[:])
}

// OpenIPCacheMap opens the pinned ipcache at path, read-only.
func OpenIPCacheMap(path string) (*IPCacheMap, error) {
	m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("ipcache map %s: %w", path, err)
	}
	return &IPCacheMap{path: path, m: m, at: time.Now()}, nil
}

// current is the map to read: the one pinned at path now, looked at again
// every ipcacheRecheck (kept when the pin cannot be read).
func (c *IPCacheMap) current() *ebpf.Map {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.path == "" || time.Since(c.at) < ipcacheRecheck {
		return c.m
	}
	c.at = time.Now()
	m, err := ebpf.LoadPinnedMap(c.path, &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return c.m
	}
	if same(m, c.m) {
		m.Close()
		return c.m
	}
	c.m.Close()
	c.m = m
	return m
}

func same(a, b *ebpf.Map) bool {
	ia, err1 := a.Info()
	ib, err2 := b.Info()
	if err1 != nil || err2 != nil {
		return false
	}
	ida, ok1 := ia.ID()
	idb, ok2 := ib.ID()
	return ok1 && ok2 && ida == idb
}

// Identity looks addr (IPv4) up: the identity of its longest prefix in
// the map; ok false when none holds it or the lookup failed.
func (c *IPCacheMap) Identity(addr netip.Addr) (uint32, bool) {
	addr = addr.Unmap()
	if !addr.Is4() {
		return 0, false
	}
	k := ipcacheKey{Prefixlen: 32, IP: addrKey(addr)}
	var v ipcacheValue
	if err := c.current().Lookup(&k, &v); err != nil {
		return 0, false // none (ebpf.ErrKeyNotExist) or unreadable
	}
	return v.Identity, true
}

// Close releases the map.
func (c *IPCacheMap) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m.Close()
}
