package remote

// SetLimits lowers what one remote cluster may hold in an agent, for a
// test; the returned func puts the old limits back.
func SetLimits(nodes, endpoints, services int) func() {
	old := limits
	limits.nodes, limits.endpoints, limits.services = nodes, endpoints, services
	return func() { limits = old }
}

// SetByteBudget lowers the bytes of node records, identities and services
// one remote may hold, for a test; the returned func puts the old back.
func SetByteBudget(n int) func() {
	old := maxRemoteBytes
	maxRemoteBytes = n
	return func() { maxRemoteBytes = old }
}

// RawNodes is how many node records the manager keeps as read for
// cluster name (to vet them again).
func RawNodes(m *Manager, name string) int {
	m.mu.Lock()
	c := m.remotes[name]
	m.mu.Unlock()
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.rawNodes)
}
