package remote

import (
	"encoding/binary"
	"hash/maphash"
	"maps"
	"net/netip"

	"github.com/filament-net/filament/agent/ipcache"
)

// The mirror of a remote cluster's ipcache is what lets a resync or a
// withdrawal delete exactly what was passed on, and a repeated value pass
// nothing. It holds an entry in 16 bytes of map slot (issue 19 part 2:
// agent memory per remote endpoint it does not install ≤ 64 B): the IPv4
// address as the key (remote entries are IPv4 only, ipcache.Entry.Check),
// the index of its node's name in a reference-counted table, and a keyed
// 64-bit hash of what was passed on. What the agent needs of an entry it
// keeps itself (agent/routing); a deletion carries the address and the
// node only (Callbacks.Entry).

// compactIP is one mirrored entry (the map key is the address).
type compactIP struct {
	sum  [2]uint32 // keyed hash of the accepted entry (equal: unchanged)
	node uint32    // index in the cluster's nodeNames; listedBit set: in the session's first list
}

// listedBit marks, in compactIP.node, an entry the first list of a session
// held: the others vanished while the cluster was out of reach (a set of
// listed keys would cost more than the mirror during an initial sync).
const listedBit = 1 << 31

// hashSeed keys the entries' hashes (per process): a remote cannot choose
// two different entries with one hash, which would hide an update.
var hashSeed = maphash.MakeSeed()

// sumOf hashes every field of e.
func sumOf(e ipcache.Entry) [2]uint32 {
	var h maphash.Hash
	h.SetSeed(hashSeed)
	var b [4]byte
	ip := e.IP.As4()
	h.Write(ip[:])
	binary.BigEndian.PutUint32(b[:], uint32(e.Identity))
	h.Write(b[:])
	hb, _ := e.HostIP.MarshalBinary()
	h.WriteByte(byte(len(hb)))
	h.Write(hb)
	for _, s := range []string{e.Node, e.Namespace, e.Pod} {
		binary.BigEndian.PutUint32(b[:], uint32(len(s)))
		h.Write(b[:])
		h.WriteString(s)
	}
	v := h.Sum64()
	return [2]uint32{uint32(v), uint32(v >> 32)}
}

func key4(ip netip.Addr) uint32 { return binary.BigEndian.Uint32(ip.AsSlice()) }

func addr4(k uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], k)
	return netip.AddrFrom4(b)
}

// nodeNames interns the qualified node names of a cluster's entries,
// counting references so that names no entry uses any more are freed
// (a remote cannot grow the table by churning names).
type nodeNames struct {
	index map[string]uint32
	names []string
	refs  []uint32
	free  []uint32
}

func (t *nodeNames) ref(name string) uint32 {
	if t.index == nil {
		t.index = map[string]uint32{}
	}
	i, ok := t.index[name]
	if !ok {
		if n := len(t.free); n > 0 {
			i, t.free = t.free[n-1], t.free[:n-1]
			t.names[i], t.refs[i] = name, 0
		} else {
			i = uint32(len(t.names))
			t.names, t.refs = append(t.names, name), append(t.refs, 0)
		}
		t.index[name] = i
	}
	t.refs[i]++
	return i
}

func (t *nodeNames) unref(i uint32) {
	if int(i) >= len(t.refs) || t.refs[i] == 0 {
		return
	}
	if t.refs[i]--; t.refs[i] == 0 {
		delete(t.index, t.names[i])
		t.names[i] = ""
		t.free = append(t.free, i)
	}
}

// ipMirror is a cluster's mirrored ipcache entries.
type ipMirror struct {
	entries map[uint32]compactIP
	nodes   nodeNames
	listing bool // a session's first list is being read: put marks
	marked  int  // entries with listedBit set (startListing walks only when some are)
	room    int  // entries made room for ahead of a list (0: none)
}

func newIPMirror() *ipMirror { return &ipMirror{entries: map[uint32]compactIP{}} }

func (m *ipMirror) len() int {
	if m == nil {
		return 0
	}
	return len(m.entries)
}

// maxPresize bounds the room made ahead for a list (the count is the
// remote's claim): a cluster of 100 nodes of 1,000 endpoints and some.
const maxPresize = 1 << 17

// expect makes room ahead for a list of n entries when the mirror is
// empty (a first sync), so that it is not grown and rehashed an entry at
// a time.
func (m *ipMirror) expect(n int64) {
	if n > 0 && len(m.entries) == 0 {
		m.room = int(min(n, maxPresize))
		m.entries = make(map[uint32]compactIP, m.room)
	}
}

// fit gives back the room made ahead when the list held much less than
// its count said (a map never shrinks: a remote's false count would keep
// it for the mirror's life).
func (m *ipMirror) fit() {
	if m.room > 0 && 2*len(m.entries) < m.room {
		fit := make(map[uint32]compactIP, len(m.entries))
		maps.Copy(fit, m.entries)
		m.entries = fit
	}
	m.room = 0
}

// put records e, accepted: it says whether e changes what was passed on.
func (m *ipMirror) put(e ipcache.Entry) bool {
	k, sum := key4(e.IP), sumOf(e)
	var mark uint32
	if m.listing {
		mark = listedBit
	}
	old, had := m.entries[k]
	wasMarked := had && old.node&listedBit != 0
	if mark != 0 && !wasMarked {
		m.marked++
	}
	if had && old.sum == sum {
		old.node |= mark
		m.entries[k] = old
		return false
	}
	n := m.nodes.ref(e.Node)
	if had {
		m.nodes.unref(old.node &^ listedBit)
	}
	if wasMarked {
		mark = listedBit // a mark stays
	}
	m.entries[k] = compactIP{sum: sum, node: n | mark}
	return true
}

// has says whether ip has an entry.
func (m *ipMirror) has(ip netip.Addr) bool {
	_, ok := m.entries[key4(ip)]
	return ok
}

// accepted says whether e is the entry held for its address, as it was
// passed on.
func (m *ipMirror) accepted(e ipcache.Entry) bool {
	c, ok := m.entries[key4(e.IP)]
	return ok && c.sum == sumOf(e)
}

// keepListed marks ip's entry, if any, as held by the list under way (a
// refused value keeps what the key held).
func (m *ipMirror) keepListed(ip netip.Addr) {
	if !m.listing || !ip.Is4() {
		return
	}
	k := key4(ip)
	if c, ok := m.entries[k]; ok && c.node&listedBit == 0 {
		c.node |= listedBit
		m.entries[k] = c
		m.marked++
	}
}

// startListing begins a session's first list (marks left by a list that
// did not end are cleared).
func (m *ipMirror) startListing() {
	m.listing = true
	if m.marked == 0 {
		return // a list that broke off before any entry: nothing to walk
	}
	m.marked = 0
	for k, c := range m.entries {
		if c.node&listedBit != 0 {
			c.node &^= listedBit
			m.entries[k] = c
		}
	}
}

// endListing ends it: entries the list did not hold are forgotten and
// their deletions returned.
func (m *ipMirror) endListing() []ipcache.Entry {
	var gone []ipcache.Entry
	for k, c := range m.entries {
		if c.node&listedBit != 0 {
			c.node &^= listedBit
			m.entries[k] = c
			continue
		}
		gone = append(gone, m.deletion(k, c))
		delete(m.entries, k)
		m.nodes.unref(c.node)
	}
	m.listing, m.marked = false, 0
	m.fit()
	return gone
}

// remove forgets ip's entry and returns what a deletion passes on.
func (m *ipMirror) remove(ip netip.Addr) (ipcache.Entry, bool) {
	if !ip.Is4() {
		return ipcache.Entry{}, false
	}
	k := key4(ip)
	old, had := m.entries[k]
	if !had {
		return ipcache.Entry{}, false
	}
	e := m.deletion(k, old)
	delete(m.entries, k)
	if old.node&listedBit != 0 {
		m.marked--
	}
	m.nodes.unref(old.node &^ listedBit)
	return e, true
}

func (m *ipMirror) deletion(k uint32, c compactIP) ipcache.Entry {
	return ipcache.Entry{IP: addr4(k), Node: m.nodes.names[c.node&^listedBit]}
}

// each calls f with every entry's deletion.
func (m *ipMirror) each(f func(ipcache.Entry)) {
	if m == nil {
		return
	}
	for k, c := range m.entries {
		f(m.deletion(k, c))
	}
}
