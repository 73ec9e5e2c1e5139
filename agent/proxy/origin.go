package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/cilium/ebpf"
)

// Origins tells the identity of a connection's source as the datapath knew
// it when it steered the connection to the proxy (the VNI of a flow from
// another node, a pod's own identity), by the connection's tuple.
//
// An entry is read once and removed: a connection's at accept, a
// datagram's at its read. A datagram's origin is also kept here for a
// second: several datagrams of a tuple may be in flight when the proxy
// reads the first (glibc and musl send a name's A and AAAA queries from
// one socket at once), the datapath's writes of the entry landing on one
// another.
type Origins interface {
	Origin(src, dst netip.AddrPort, datagram bool) (identity uint32, ok bool)
}

// OriginMap reads the datapath's pinned proxy_origin map (bpf/lib/maps.h).
type OriginMap struct {
	m *ebpf.Map
	// recent: datagrams' origins read in the last recentOrigin, at most
	// maxRecentOrigins; order: their tuples as read, oldest first (an
	// entry read again is queued again, its older place skipped).
	mu     sync.Mutex
	recent map[originKey]seenOrigin
	order  []queuedOrigin
}

type seenOrigin struct {
	id uint32
	at time.Time
}

type queuedOrigin struct {
	k  originKey
	at time.Time
}

const (
	recentOrigin     = time.Second
	maxRecentOrigins = 4096
)

// OpenOriginMap opens the pinned map at path.
func OpenOriginMap(path string) (*OriginMap, error) {
	m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: false})
	if err != nil {
		return nil, fmt.Errorf("proxy origin map %s: %w", path, err)
	}
	return &OriginMap{m: m}, nil
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
	err := o.m.LookupAndDelete(&k, &id) // one system call per connection or datagram
	if errors.Is(err, ebpf.ErrNotSupported) {
		if err = o.m.Lookup(&k, &id); err == nil {
			o.m.Delete(&k)
		}
	}
	if datagram {
		return o.seen(k, id, err == nil)
	}
	return id, err == nil
}

// seen keeps a datagram's origin read now (found), or gives the one read
// for its tuple in the last recentOrigin.
func (o *OriginMap) seen(k originKey, id uint32, found bool) (uint32, bool) {
	now := time.Now()
	o.mu.Lock()
	defer o.mu.Unlock()
	if !found {
		s, ok := o.recent[k]
		return s.id, ok && now.Sub(s.at) < recentOrigin
	}
	// The oldest go: those past recentOrigin, and more while full.
	for len(o.order) > 0 && (now.Sub(o.order[0].at) >= recentOrigin || len(o.recent) >= maxRecentOrigins || len(o.order) > 2*maxRecentOrigins) {
		q := o.order[0]
		o.order = o.order[1:]
		if s, ok := o.recent[q.k]; ok && s.at.Equal(q.at) {
			delete(o.recent, q.k)
		}
	}
	if o.recent == nil {
		o.recent = map[originKey]seenOrigin{}
	}
	o.recent[k] = seenOrigin{id, now}
	o.order = append(o.order, queuedOrigin{k, now})
	return id, true
}

// Close closes the map.
func (o *OriginMap) Close() error { return o.m.Close() }
