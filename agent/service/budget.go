package service

// MaxNamespaceSlots bounds the load-balancer slots (lb_slots entries, 256K
// per node, shared by every service of the node) one namespace's services
// of this cluster hold on a node: each frontend (a port's ClusterIP, and
// its NodePort on each of the node's addresses) holds one slot per
// backend, a graded frontend GradedSlots at least. A service that would
// take its namespace past it is refused whole, naming the namespace and
// the bound; remote clusters' backends of a global service are bounded
// by the mesh's own limits (clustermesh.MaxRemote*), not here.
const MaxNamespaceSlots = 65536

// MaxBackends bounds one service's backends: a frontend's slot count is
// 16 bits in the datapath.
const MaxBackends = 65535

// slots is how many lb_slots entries s holds on a node of nodeIPs.
func slots(s *Service, nodeIPs int) int {
	per := len(s.Backends)
	if o, err := s.options(); err == nil && o.Failover == FailoverGraded {
		per = max(per, GradedSlots)
	}
	n := 0
	for _, p := range s.Spec.Ports {
		if s.Spec.ClusterIP != "" {
			n += per
		}
		if p.NodePort != 0 {
			n += per * nodeIPs
		}
	}
	return n
}

// checkBudget refuses s when its namespace's services, s instead of its
// earlier version, would hold more than MaxNamespaceSlots.
func (m *Manager) checkBudget(s *Service) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.budgetLocked(s.Metadata.Namespace+"/"+s.Metadata.Name, s)
}

// budgetLocked is checkBudget for s stored under key (its earlier version
// there does not count), with m.mu held. The kvstore's watch checks each
// service it reads with it too.
func (m *Manager) budgetLocked(key string, s *Service) error {
	ns := s.Metadata.Namespace
	nodeIPs := len(m.cfg.NodeIPs)
	need := slots(s, nodeIPs)
	use := m.nsSlots[ns]
	if old, ok := m.local[key]; ok {
		use -= slots(old, nodeIPs)
	}
	if use+need > MaxNamespaceSlots {
		return invalid("namespace %q: its services would hold %d load-balancer slots on each node (this one %d), at most %d",
			ns, use+need, need, MaxNamespaceSlots)
	}
	return nil
}
