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

// Sizes one remote cluster's keys and values may have, in another
// cluster's cache (clustermesh/cache) and in its agents
// (clustermesh/remote): a key longer than MaxRemoteKey, or a value over
// its kind's bound, is refused (counted) and withdraws what the key held;
// past MaxRemoteBytes of node records, identities and services an agent
// takes no new key of them (ipcache entries are bounded by their count
// and ipcache.MaxValueLen). The longest key a remote's agents write, a
// service's, is under 400 bytes; a node record is a few KiB. Until
// 2026-12-07 only the counts were bounded in agents (a remote's 100,000
// refused node records of 60 KiB were all kept for vetting again), and
// the cache counted values but not keys (TestRemoteHoldsBoundedBytes,
// TestCacheCountsKeyBytes).
const (
	MaxRemoteKey           = 1 << 10
	MaxRemoteNodeValue     = 64 << 10
	MaxRemoteIdentityValue = 256 << 10
	MaxRemoteValue         = 1 << 20
	MaxRemoteBytes         = 256 << 20
)
