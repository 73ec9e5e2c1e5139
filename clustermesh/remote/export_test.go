package remote

// SetLimits lowers what one remote cluster may hold in an agent, for a
// test; the returned func puts the old limits back.
func SetLimits(nodes, endpoints, services int) func() {
	old := limits
	limits.nodes, limits.endpoints, limits.services = nodes, endpoints, services
	return func() { limits = old }
}
