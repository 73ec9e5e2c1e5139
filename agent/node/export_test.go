package node

// SetPodCIDRListed runs f in AllocatePodCIDR between its list of the
// claims and its claim (tests: another node claiming meanwhile).
func SetPodCIDRListed(f func()) (restore func()) {
	old := podCIDRListed
	podCIDRListed = f
	return func() { podCIDRListed = old }
}
