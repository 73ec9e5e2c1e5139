package service

import (
	"cmp"
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
	// Preferred: new connections go to it (the datapath's slots; the
	// manager's status marks those holding a slot or Maglev entry).
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
// have and take no new ones; of remote clusters' backends that take no
// new connections (those too, and those on dead nodes) a frontend lists
// at most as many as of their usable ones (selectBounded).
func Select(local *Service, remotes map[string]*Service, localCluster string, fe Frontend, alive Alive) []BackendView {
	out, _, _ := selectBounded(local, remotes, localCluster, fe, alive, MaxBackends)
	return out
}

// selectBounded is Select listing at most remoteMax remote clusters'
// backends (shared between the clusters, remoteShares), of those that
// take no new connections at most as many as of the usable ones and
// none when that is past remoteMax; leftOut counts those left out for
// the bound (not for MaxBackends, nor past as many as the usable ones).
// published counts each remote cluster's backends and usable ones before
// any are left out (a graded split's healths, gradedSplit).
func selectBounded(local *Service, remotes map[string]*Service, localCluster string, fe Frontend, alive Alive, remoteMax int) (out []BackendView, leftOut int, published map[string]Level) {
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
	remoteN, remoteU := 0, 0 // remote backends, the usable ones
	published = map[string]Level{}
	for _, v := range out {
		if v.Cluster != localCluster {
			remoteN++
			p := published[v.Cluster]
			p.Total++
			if usable(v) {
				remoteU++
				p.Healthy++
			}
			published[v.Cluster] = p
		}
	}
	// Remote backends that take no new connections are listed only to
	// keep their NodePort flows, at most as many as the usable remote
	// ones (a remote publishes as many as it likes, and each one holds
	// room of the node's MaxRemoteBackends another frontend may need for
	// usable ones), none while the bound binds.
	want := remoteU + min(remoteN-remoteU, remoteU)
	remoteMax = max(remoteMax, 0)
	if len(out) > MaxBackends || want < remoteN || want > remoteMax {
		// The datapath counts a frontend's backends in 16 bits: the local
		// cluster's stay (Validate bounds them), then remote clusters' up
		// to remoteMax, shared fairly (remoteShares), the rest are left
		// out (until 2026-12-05 the count wrapped,
		// TestSelectBoundedByMaxBackends).
		kept := slices.DeleteFunc(slices.Clone(out), func(v BackendView) bool { return v.Cluster != localCluster })
		room := min(MaxBackends-len(kept), remoteMax)
		other := want - remoteU // room for the others
		if want > room {
			other = 0
		}
		listed := remoteShares(out, localCluster, min(room, remoteU), other)
		if fit := min(want, MaxBackends-len(kept)); fit > remoteMax {
			leftOut = fit - len(listed) // for the bound, not for MaxBackends nor the others' cap
		}
		out = append(kept, listed...)
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
		sp := gradedSplit(out, localCluster, published)
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
	return out, leftOut, published
}

// remoteShares picks at most room of the remote clusters' usable
// backends (active, node alive) of views (sorted by cluster) and at most
// other of the rest, dividing each between the clusters fairly
// (fairShares: an equal share each, what a cluster does not use of its
// share to the others), each cluster's taken in the
// order of a hash of their address (addrHash). A remote cluster chooses
// its name, its backends' addresses and states, so none of those may
// take another's room. Until a review found it the room was filled in
// order of cluster and address, terminating backends included: a remote
// named aaa publishing terminating backends filled it and a healthy
// cluster was left out of the frontend
// (TestSelectBoundedSharesRemoteRoomFairly); then they were listed in
// what room the usable ones left, which another frontend needed for its
// usable ones (TestRemoteNonUsableBackendsLeaveRoomForOtherServices).
func remoteShares(views []BackendView, localCluster string, room, other int) []BackendView {
	var clusters [][2][]BackendView // each cluster's usable backends, then the rest
	for i, v := range views {
		if v.Cluster == localCluster {
			continue
		}
		if i == 0 || views[i-1].Cluster != v.Cluster {
			clusters = append(clusters, [2][]BackendView{})
		}
		c := &clusters[len(clusters)-1]
		if usable(v) {
			c[0] = append(c[0], v)
		} else {
			c[1] = append(c[1], v)
		}
	}
	var out []BackendView
	for part, room := range []int{room, other} {
		want := make([]int, len(clusters))
		for i, c := range clusters {
			want[i] = len(c[part])
		}
		for i, n := range fairShares(room, want) {
			out = append(out, byAddrHash(clusters[i][part])[:n]...)
		}
	}
	return out
}

// fairShares divides room between parts wanting want[i] (max-min fair):
// each part wanting no more than an equal share of what the smaller ones
// leave gets its want, the others that share, the units left over one
// each to the earliest of them; all of room is used while a part wants
// more, and no part gets more than it wants.
func fairShares(room int, want []int) []int {
	out := make([]int, len(want))
	order := make([]int, len(want))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(want[a], want[b]) })
	room = max(room, 0)
	for k, i := range order {
		share := room / (len(order) - k)
		if want[i] <= share {
			out[i] = want[i]
			room -= want[i]
			continue
		}
		rest := slices.Clone(order[k:]) // each wants more than share
		slices.Sort(rest)
		for n, j := range rest {
			out[j] = share
			if n < room-share*len(rest) {
				out[j]++
			}
		}
		break
	}
	return out
}

// byAddrHash returns views ordered by a hash of their address (then the
// address), the same on every node.
func byAddrHash(views []BackendView) []BackendView {
	addrs := make([]netip.AddrPort, len(views))
	for i, v := range views {
		addrs[i] = v.Addr
	}
	out := make([]BackendView, len(views))
	for k, i := range hashOrder(addrs) {
		out[k] = views[i]
	}
	return out
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
