package routing

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/filament-net/filament/agent/identity"
)

// IPCacheMax is the capacity of the BPF ipcache (max_entries in
// bpf/lib/maps.h).
const IPCacheMax = 512 * 1024

// ErrMapFull: a new key did not fit in a map at its capacity (the kernel
// refuses it the same way).
var ErrMapFull = errors.New("map full")

// MemMaps are the router's datapath maps held in memory, for simulations
// that feed a router more than one machine's kernel should hold (the
// cluster mesh scale benchmark). Like the BPF ipcache, the ipcache refuses
// a new prefix once it holds its capacity; nothing else is kept but
// counts. Safe for concurrent use.
type MemMaps struct {
	mu      sync.Mutex
	max     int
	ipc     map[netip.Prefix]bool // prefix → written as a cover
	nodes   map[netip.Addr]bool
	peak    int
	refused int
}

// NewMemMaps returns empty maps whose ipcache holds at most capacity
// prefixes (IPCacheMax for the datapath's).
func NewMemMaps(capacity int) *MemMaps {
	return &MemMaps{max: capacity, ipc: map[netip.Prefix]bool{}, nodes: map[netip.Addr]bool{}}
}

// NewWithMaps returns a router over maps instead of the datapath, with no
// device or program set up (New does that). Its route calls still go to
// the kernel: run it in a network namespace of its own.
func NewWithMaps(maps Maps, mode, self string) (*Router, error) {
	if mode != Tunnel && mode != Native {
		return nil, fmt.Errorf("%w: got %q", ErrMode, mode)
	}
	return newRouter(maps, mode, self), nil
}

func (m *MemMaps) UpsertNode(ip netip.Addr, _ bool, _ uint32) error {
	m.mu.Lock()
	m.nodes[ip] = true
	m.mu.Unlock()
	return nil
}

func (m *MemMaps) DeleteNode(ip netip.Addr) error {
	m.mu.Lock()
	delete(m.nodes, ip)
	m.mu.Unlock()
	return nil
}

func (m *MemMaps) UpsertNodeLocalAddr(netip.Addr) error { return nil }
func (m *MemMaps) DeleteNodeLocalAddr(netip.Addr) error { return nil }
func (m *MemMaps) NodeLocalAddrs() (map[netip.Addr]bool, error) {
	return map[netip.Addr]bool{}, nil
}

func (m *MemMaps) UpsertEncryptPeer(netip.Addr) error { return nil }
func (m *MemMaps) DeleteEncryptPeer(netip.Addr)       {}

func (m *MemMaps) UpsertIPCacheTunnel(p netip.Prefix, _ identity.NumericIdentity, _ netip.Addr) error {
	return m.put(p, false)
}

func (m *MemMaps) UpsertIPCacheCover(p netip.Prefix, _ identity.NumericIdentity, _ netip.Addr) error {
	return m.put(p, true)
}

func (m *MemMaps) put(p netip.Prefix, cover bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.ipc[p]; !ok && len(m.ipc) >= m.max {
		m.refused++
		return fmt.Errorf("ipcache: put %s: %w (%d entries)", p, ErrMapFull, m.max)
	}
	m.ipc[p] = cover
	m.peak = max(m.peak, len(m.ipc))
	return nil
}

func (m *MemMaps) DeleteIPCache(p netip.Prefix) error {
	m.mu.Lock()
	delete(m.ipc, p)
	m.mu.Unlock()
	return nil
}

// IPCacheStats are the ipcache's counts.
type IPCacheStats struct {
	Entries, Covers, Slash32s int
	// Peak is the most entries held at once; Refused counts the writes of
	// new prefixes refused because the map was full.
	Peak, Refused int
	// Nodes is the size of the nodes map.
	Nodes int
}

// Stats counts what the maps hold.
func (m *MemMaps) Stats() IPCacheStats {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := IPCacheStats{Entries: len(m.ipc), Peak: m.peak, Refused: m.refused, Nodes: len(m.nodes)}
	for p, cover := range m.ipc {
		switch {
		case cover:
			s.Covers++
		case p.Bits() == 32:
			s.Slash32s++
		}
	}
	return s
}
