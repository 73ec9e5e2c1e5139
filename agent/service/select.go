package service

import (
	"net/netip"
	"slices"
)

// BackendView is one backend of one frontend as the agent sees it.
type BackendView struct {
	Addr    netip.AddrPort `json:"addr"`
	Cluster string         `json:"cluster"`
	Node    string         `json:"node,omitempty"`
	State   string         `json:"state"`
	// Healthy: its node is alive and its cluster connected.
	Healthy bool `json:"healthy"`
	// Preferred: new connections go to it (the datapath's slots).
	Preferred bool `json:"preferred"`
}

// Alive says whether a backend's node is up; node is as the backend names
// it, cluster is the backend's cluster.
type Alive func(cluster, node string) bool

// matchPort finds the port of a remote cluster's service that corresponds
// to local port p: same name when p has one, else same number and protocol.
func matchPort(s *Service, p Port) (Port, bool) {
	for _, q := range s.Spec.Ports {
		if q.Proto() != p.Proto() {
			continue
		}
		if (p.Name != "" && q.Name == p.Name) || (p.Name == "" && q.Port == p.Port) {
			return q, true
		}
	}
	return Port{}, false
}

// Select lists the backends of frontend fe of the local service: its own
// and, when it is global, those of the same service in remote clusters
// (remotes, by cluster name)
// that are global and shared. Backends that are active and healthy are
// usable; which usable ones new connections prefer follows the affinity:
// local (the local cluster's while it has any, else the remote ones),
// remote (the mirror image) or none (all); with failover graded, those of
// each level that GradedSplit gives a share. Terminating and maintenance
// backends are listed but never preferred: they keep the connections they
// have and take no new ones.
func Select(local *Service, remotes map[string]*Service, localCluster string, fe Frontend, alive Alive) []BackendView {
	out, _ := selectBounded(local, remotes, localCluster, fe, alive, MaxBackends)
	return out
}

// selectBounded is Select listing at most remoteMax remote clusters'
// backends (in order of cluster and address); leftOut counts those left
// out for that bound (not for MaxBackends).
func selectBounded(local *Service, remotes map[string]*Service, localCluster string, fe Frontend, alive Alive, remoteMax int) (out []BackendView, leftOut int) {
	add := func(s *Service, cluster string, p Port) {
		for _, b := range s.Backends {
			ip, err := netip.ParseAddr(b.IP)
			if err != nil {
				continue
			}
			state := b.State
			if state == "" {
				state = StateActive
			}
			v := BackendView{Addr: netip.AddrPortFrom(ip, b.BackendPort(p)), Cluster: cluster, Node: b.Node, State: state}
			v.Healthy = alive == nil || b.Node == "" || alive(cluster, b.Node)
			out = append(out, v)
		}
	}
	add(local, localCluster, fe.port)
	opts := local.Options()
	if opts.Global {
		for cluster, r := range remotes {
			ro := r.Options()
			if !ro.Global || !ro.Shared || cluster == localCluster {
				continue
			}
			p, ok := matchPort(r, fe.port)
			if !ok {
				continue
			}
			add(r, cluster, p)
		}
	}
	sortBackends(out)
	remoteN := 0
	for _, v := range out {
		if v.Cluster != localCluster {
			remoteN++
		}
	}
	remoteMax = max(remoteMax, 0)
	if len(out) > MaxBackends || remoteN > remoteMax {
		// The datapath counts a frontend's backends in 16 bits: the local
		// cluster's stay (Validate bounds them), then remote clusters' in
		// order up to remoteMax, the rest are left out (until 2026-12-05
		// the count wrapped, TestSelectBoundedByMaxBackends).
		kept := slices.DeleteFunc(slices.Clone(out), func(v BackendView) bool { return v.Cluster != localCluster })
		room := min(MaxBackends-len(kept), remoteMax)
		if fit := min(remoteN, MaxBackends-len(kept)); fit > remoteMax {
			leftOut = fit - remoteMax // for the bound, not for MaxBackends
		}
		for _, v := range out {
			if room == 0 {
				break
			}
			if v.Cluster != localCluster {
				kept = append(kept, v)
				room--
			}
		}
		out = kept
		sortBackends(out)
	}
	var localUsable, remoteUsable int
	for _, v := range out {
		if usable(v) {
			if v.Cluster == localCluster {
				localUsable++
			} else {
				remoteUsable++
			}
		}
	}
	var lload, rload uint64
	if opts.Failover == FailoverGraded {
		sp := GradedSplit(out, localCluster)
		lload, rload = sp.levelLoads()
	}
	for i, v := range out {
		if !usable(v) {
			continue
		}
		isLocal := v.Cluster == localCluster
		switch {
		case opts.Failover == FailoverGraded:
			out[i].Preferred = (isLocal && lload > 0) || (!isLocal && rload > 0)
		case opts.Affinity == AffinityLocal:
			out[i].Preferred = isLocal || localUsable == 0
		case opts.Affinity == AffinityRemote:
			out[i].Preferred = !isLocal || remoteUsable == 0
		default:
			out[i].Preferred = true
		}
	}
	return out, leftOut
}

// Preferred returns the addresses of the preferred backends, in order.
func Preferred(v []BackendView) []netip.AddrPort {
	var out []netip.AddrPort
	for _, b := range v {
		if b.Preferred {
			out = append(out, b.Addr)
		}
	}
	return out
}
