package service

import "fmt"

// MaxNamespaceSlots bounds the load-balancer slots (lb_slots entries, 256K
// per node, shared by every service of the node) one namespace's services
// of this cluster hold on a node: each frontend (a port's ClusterIP, and
// its NodePort on each of the node's addresses) holds one slot per
// backend, a graded frontend GradedSlots at least. A service that would
// take its namespace past it is refused whole, naming the namespace and
// the bound; remote clusters' backends of global services are bounded
// together by MaxRemoteBackends, not here.
const MaxNamespaceSlots = 65536

// MaxBackends bounds one service's backends: a frontend's slot count is
// 16 bits in the datapath.
const MaxBackends = 65535

// MaxNamespaceFrontends bounds the frontends (lb_services entries, 65,536
// per node, shared by every service of the node: a port's ClusterIP, and
// its NodePort on each of the node's addresses) one namespace's services
// of this cluster hold on a node, backends or none: a quarter of the map.
const MaxNamespaceFrontends = 16384

// A stored service's encoded value is bounded: every change of a service
// is a kvstore revision of its size, kept until compaction (10,000 of
// them), and sent to every agent. It may take StoredBytesPerPort for each
// port (one of 15-character name, target and node port takes about 90),
// StoredBytesPerBackend for each backend (its address, state, node) and
// StoredBytes for the rest: metadata, annotations (16 KiB kept whole),
// the backends' ports that differ from the service's. What grows with
// ports times backends (each backend naming every port) does not fit.
const (
	StoredBytes           = 256 << 10
	StoredBytesPerPort    = 128
	StoredBytesPerBackend = 128
)

// maxStored is the bound on s's encoded value.
func maxStored(s *Service) int {
	return StoredBytes + StoredBytesPerPort*len(s.Spec.Ports) + StoredBytesPerBackend*len(s.Backends)
}

// checkSize refuses s whose encoded value data passes maxStored, naming
// the service and the sizes.
func checkSize(s *Service, data []byte) error {
	if limit := maxStored(s); len(data) > limit {
		return invalid("service %s/%s: its stored value would be %d bytes, at most %d (%d, and %d a port and %d a backend)",
			s.Metadata.Namespace, s.Metadata.Name, len(data), limit, StoredBytes, StoredBytesPerPort, StoredBytesPerBackend)
	}
	return nil
}

// MaxNamespaceMaglev bounds the frontends of Maglev services (each a
// Maglev table in lb_maglev, 1,024 per node) one namespace's services
// hold on a node: a quarter of the map.
const MaxNamespaceMaglev = 256

// Namespaces together: each namespace's use up to its floor
// (NamespaceFloor*) is drawn from a reserve, and what they hold beyond
// their floors from one share of each map (Tenant*), so a few namespaces
// at their own bounds cannot fill a node's maps and leave every other
// namespace's new services failing. The maps: lb_slots 262,144 (a
// quarter for remote clusters' backends, MaxRemoteBackends; half the
// tenants' share; a quarter the floors' reserve), lb_services 65,536 and
// lb_maglev 1,024 (three quarters shared, a quarter reserved).
const (
	TenantSlots     = 131072
	TenantFrontends = 49152
	TenantMaglev    = 768

	NamespaceFloorSlots     = 1024
	NamespaceFloorFrontends = 256
	NamespaceFloorMaglev    = 4
)

var (
	tenantShare    = usage{TenantSlots, TenantFrontends, TenantMaglev}
	namespaceFloor = usage{NamespaceFloorSlots, NamespaceFloorFrontends, NamespaceFloorMaglev}
	floorReserve   = usage{262144 - MaxRemoteBackends - TenantSlots, 65536 - TenantFrontends, 1024 - TenantMaglev}
)

// usage is what a namespace's services hold of a node's load-balancer
// maps: lb_slots entries, lb_services entries and Maglev tables.
type usage struct{ slots, frontends, maglev int }

func (u usage) add(v usage, sign int) usage {
	return usage{u.slots + sign*v.slots, u.frontends + sign*v.frontends, u.maglev + sign*v.maglev}
}

// atMost is u with each part at most v's.
func (u usage) atMost(v usage) usage {
	return usage{min(u.slots, v.slots), min(u.frontends, v.frontends), min(u.maglev, v.maglev)}
}

// parts are u's parts, in the order of partNames.
func (u usage) parts() [3]int { return [3]int{u.slots, u.frontends, u.maglev} }

// partNames name usage's parts as the refusals do.
var partNames = [3]string{"load-balancer slots", "frontends", "Maglev frontends"}

// use is what s holds on a node of nodeIPs addresses whose default
// algorithm is alg.
func use(s *Service, nodeIPs int, alg string) usage {
	per := len(s.Backends)
	if o, err := s.options(); err == nil && o.Failover == FailoverGraded {
		per = max(per, GradedSlots)
	}
	fe := 0
	for _, p := range s.Spec.Ports {
		if s.Spec.ClusterIP != "" {
			fe++
		}
		if p.NodePort != 0 {
			fe += nodeIPs
		}
	}
	u := usage{slots: per * fe, frontends: fe}
	if s.Algorithm(alg) == "maglev" {
		u.maglev = fe
	}
	return u
}

// checkBudget refuses s when its namespace's services, s instead of its
// earlier version, would hold more than MaxNamespaceSlots,
// MaxNamespaceFrontends or MaxNamespaceMaglev, or take the namespaces
// together past their share (sharedLocked).
func (m *Manager) checkBudget(s *Service) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	key := s.Metadata.Namespace + "/" + s.Metadata.Name
	if err := m.budgetLocked(key, s); err != nil {
		return err
	}
	return m.sharedLocked(key, s)
}

// sharedLocked refuses s (stored under key) when, s instead of its
// earlier version, the namespaces' use beyond their floors would pass
// tenantShare, or their whole use tenantShare and floorReserve together
// (what the maps leave to namespaces: small namespaces may use the share
// too), in a part where s adds to it. At store only, not when the watch
// reads a service: services stored before (by an older agent, with other
// bounds) stay, and a change that adds nothing is never refused. m.mu
// held.
func (m *Manager) sharedLocked(key string, s *Service) error {
	ns := s.Metadata.Namespace
	now := m.nsUse[ns]
	next := now.add(m.use(s), 1)
	if old, ok := m.local[key]; ok {
		next = next.add(m.use(old), -1)
	}
	withinNow, aboveNow := m.tenantsWith(ns, now)
	within, above := m.tenantsWith(ns, next)
	floor := namespaceFloor.parts()
	for _, c := range []struct {
		now, next, bound usage
		of               func(i int) string
	}{
		{aboveNow, above, tenantShare, func(i int) string { return fmt.Sprintf("beyond each namespace's first %d", floor[i]) }},
		{withinNow.add(aboveNow, 1), within.add(above, 1), tenantShare.add(floorReserve, 1), func(int) string { return "in all" }},
	} {
		was, bound := c.now.parts(), c.bound.parts()
		for i, n := range c.next.parts() {
			if n > bound[i] && n > was[i] {
				return invalid("namespace %q: the namespaces' services together would hold %d %s on each node %s, at most %d (the rest stays for other namespaces)",
					ns, n, partNames[i], c.of(i), bound[i])
			}
		}
	}
	return nil
}

// tenantsWith is what all namespaces hold, ns holding u: within their
// floors and beyond. m.mu held.
func (m *Manager) tenantsWith(ns string, u usage) (within, above usage) {
	add := func(u usage) {
		in := u.atMost(namespaceFloor)
		within, above = within.add(in, 1), above.add(u.add(in, -1), 1)
	}
	add(u)
	for other, v := range m.nsUse {
		if other != ns {
			add(v)
		}
	}
	return within, above
}

// budgetLocked is checkBudget for s stored under key (its earlier version
// there does not count), with m.mu held. The kvstore's watch checks each
// service it reads with it too.
func (m *Manager) budgetLocked(key string, s *Service) error {
	ns := s.Metadata.Namespace
	need := m.use(s)
	have := m.nsUse[ns]
	if old, ok := m.local[key]; ok {
		have = have.add(m.use(old), -1)
	}
	all := have.add(need, 1)
	switch {
	case all.slots > MaxNamespaceSlots:
		return invalid("namespace %q: its services would hold %d load-balancer slots on each node (this one %d), at most %d",
			ns, all.slots, need.slots, MaxNamespaceSlots)
	case all.frontends > MaxNamespaceFrontends:
		return invalid("namespace %q: its services would hold %d frontends on each node (this one %d), at most %d",
			ns, all.frontends, need.frontends, MaxNamespaceFrontends)
	case all.maglev > MaxNamespaceMaglev:
		return invalid("namespace %q: its services would hold %d Maglev frontends on each node (this one %d), at most %d",
			ns, all.maglev, need.maglev, MaxNamespaceMaglev)
	}
	return nil
}

// use is what s holds on this node.
func (m *Manager) use(s *Service) usage { return use(s, len(m.cfg.NodeIPs), m.cfg.Algorithm) }
