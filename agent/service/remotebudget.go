package service

import (
	"log/slog"
	"maps"
	"slices"

	"github.com/filament-net/filament/agent/datapath"
)

// MaxRemoteBackends bounds the remote clusters' backends that this
// node's frontends of global services list together (each one an
// lb_members entry, and an lb_slots entry while new connections may take
// it): a quarter of those maps (262,144 each), as one namespace's
// services hold at most (MaxNamespaceSlots). The local cluster's
// backends of a frontend always stay; past the bound a frontend lists the
// remote backends it has room for (divided between the remote clusters,
// remoteShares) and its service takes the places remote backends leave
// later. Until
// 2026-12-06 only the mesh's limits bounded them: a remote publishing
// services of 65,535 backends behind four of this cluster's global
// services filled both maps, and every later service write of every
// namespace failed (TestRemoteBackendsLeaveRoomForLocalOnes).
const MaxRemoteBackends = 65536

// entryKey is fe as the datapath keys its entry.
func (fe Frontend) entryKey() datapath.Frontend {
	return datapath.Frontend{IP: fe.IP, Port: fe.Port, Proto: proto(fe.Protocol)}
}

// remoteUse is what one frontend's datapath entry lists of remote
// clusters' backends (written by service key), and how many it left out
// for the bound.
type remoteUse struct {
	key             string
	listed, leftOut int
}

func (m *Manager) remoteBudget() int {
	if m.maxRemoteBackends > 0 {
		return m.maxRemoteBackends
	}
	return MaxRemoteBackends
}

// remoteRoom is how many more remote backends service key may list than
// the datapath holds now, its frontends being fes: the bound less what
// the datapath's entries list, plus what those of key's frontends that go
// with this change list (applied ones not in fes that only key holds: a
// port or address changed; their entries are removed after). m.mu held.
func (m *Manager) remoteRoom(key string, fes []Frontend) int {
	room := m.remoteBudget() - m.remoteTotal
	keep := make(map[datapath.Frontend]bool, len(fes)) // a set: a service may have 16,000 frontends
	for _, fe := range fes {
		keep[fe.entryKey()] = true
	}
	for _, old := range m.applied[key] {
		if len(m.holders[old]) != 1 || !m.holders[old][key] {
			continue
		}
		if !keep[old] {
			room += m.remoteUses[old].listed
		}
	}
	return room
}

// setRemoteUse records what the datapath's entry of fe lists now, once
// written (zero: removed). m.mu held.
func (m *Manager) setRemoteUse(fe datapath.Frontend, now remoteUse) {
	if m.remoteUses == nil {
		m.remoteUses = map[datapath.Frontend]remoteUse{}
	}
	old := m.remoteUses[fe]
	m.remoteTotal += now.listed - old.listed
	m.remoteLeft += now.leftOut - old.leftOut
	if now.listed < old.listed {
		m.remoteFreed = true
	}
	if now.listed == 0 && now.leftOut == 0 {
		delete(m.remoteUses, fe)
	} else {
		m.remoteUses[fe] = now
	}
	if now.leftOut > 0 && !m.remoteFull {
		m.remoteFull = true
		slog.Error("services: remote clusters' backends hold their share of the load-balancer maps; a frontend lists fewer of them until others go, logged once",
			"service", now.key, "frontend", fe, "left out", now.leftOut, "max", m.remoteBudget())
	}
}

// refillRemote applies again the services whose frontends left remote
// backends out, once remote backends went, while there is room. m.mu held.
func (m *Manager) refillRemote() {
	if !m.remoteFreed || len(m.remoteShort) == 0 || m.refilling {
		return
	}
	m.remoteFreed, m.refilling = false, true
	defer func() { m.refilling = false }()
	for _, key := range slices.Sorted(maps.Keys(m.remoteShort)) {
		if m.remoteTotal >= m.remoteBudget() {
			return
		}
		m.apply(key)
	}
}

// RemoteBackendsLeftOut is how many remote clusters' backends the
// frontends leave out now for MaxRemoteBackends.
func (m *Manager) RemoteBackendsLeftOut() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.remoteLeft
}
