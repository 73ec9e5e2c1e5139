package clustermesh

// What one remote cluster may hold in another cluster's cache
// (clustermesh/cache) and in its agents (clustermesh/remote): past a
// bound, a new key is refused and counted, while the keys held still
// change and go. The bounds lie well above Kubernetes' largest tested
// clusters (5,000 nodes, 150,000 pods, 10,000 services); identities lie
// in the remote's own range (65,535 at most) and synced keys are a few
// canaries and the heartbeat. Until 2026-12-04 nothing bounded them: a
// hostile or broken remote writing keys without end filled the cache's
// etcd and ran every agent of the mesh out of memory.
const (
	MaxRemoteNodes      = 16384
	MaxRemoteEndpoints  = 1 << 20
	MaxRemoteServices   = 1 << 16
	MaxRemoteIdentities = 1 << 16
	MaxRemoteSynced     = 1024
)
