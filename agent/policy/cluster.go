package policy

// SetClusterScope makes peer selectors that name no cluster select only
// identities of the local cluster (unless allClusters), as a cluster mesh
// expects: to reach across clusters a rule names the peer's cluster with
// filament.io/cluster (or its Cilium alias io.cilium.k8s.policy.cluster).
// Call it before SetPolicies.
func (r *Resolver) SetClusterScope(local string, allClusters bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.localCluster, r.allClusters = local, allClusters
}
