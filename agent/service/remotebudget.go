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
// remote backends it has room for (in order of cluster and address) and
// its service takes the places remote backends leave later. Until
// 2026-12-06 only the mesh's limits bounded them: a remote publishing
// services of 65,535 backends behind four of this cluster's global
// services filled both maps, and every later service write of every
// namespace failed (TestRemoteBackendsLeaveRoomForLocalOnes).
const MaxRemoteBackends = 65536

// feUse names one frontend of one local service.
type feUse struct {
	key string
	fe  datapath.Frontend
}

// remoteUse is what one frontend lists of remote clusters' backends, and
// how many it left out for the bound.
type remoteUse struct{ listed, leftOut int }

func (m *Manager) remoteBudget() int {
	if m.maxRemoteBackends > 0 {
		return m.maxRemoteBackends
	}
	return MaxRemoteBackends
}

// remoteRoom is how many remote backends frontend u may list: the bound
// less what the other frontends list. m.mu held.
func (m *Manager) remoteRoom(u feUse) int {
	return m.remoteBudget() - (m.remoteTotal - m.remoteUses[u].listed)
}

// setRemoteUse records what frontend u lists now (zero: nothing, and
// forgotten). m.mu held.
func (m *Manager) setRemoteUse(u feUse, now remoteUse) {
	if m.remoteUses == nil {
		m.remoteUses, m.remoteShort = map[feUse]remoteUse{}, map[string]bool{}
	}
	old := m.remoteUses[u]
	m.remoteTotal += now.listed - old.listed
	m.remoteLeft += now.leftOut - old.leftOut
	if now.listed < old.listed {
		m.remoteFreed = true
	}
	if now == (remoteUse{}) {
		delete(m.remoteUses, u)
	} else {
		m.remoteUses[u] = now
	}
	if now.leftOut > 0 && !m.remoteFull {
		m.remoteFull = true
		slog.Error("services: remote clusters' backends hold their share of the load-balancer maps; a frontend lists fewer of them until others go, logged once",
			"service", u.key, "frontend", u.fe, "left out", now.leftOut, "max", m.remoteBudget())
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
