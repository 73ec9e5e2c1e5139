// Package clustermesh owns what joins clusters into one mesh: the
// clustermesh-apiserver (a cluster's etcd served to other clusters over
// mutual TLS, read-only) and the per-remote-cluster watchers of the agent.
// It is empty until the cluster mesh issue; the kvstore layout it will serve
// is already the one in docs/architecture.md.
package clustermesh
