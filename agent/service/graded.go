package service

import (
	"cmp"
	"hash/fnv"
	"net/netip"
	"slices"

	"github.com/filament-net/filament/agent/service/maglev"
)

// Graded spill-over failover (service.filament.io/failover: graded).
//
// The local cluster and the remote clusters are two priority levels, as
// in Envoy's priority-level load balancing: the local level keeps the
// share of new connections its health allows and the rest spills to the
// remote level, whose clusters take it in proportion to their healthy
// backends. Everything here is deterministic integer arithmetic in parts
// per million, so every node of a cluster with the same view computes the
// same split and the same tables (Maglev must agree across nodes).

// PPM is the unit of health and load: parts per million.
const PPM = 1_000_000

// Overprovisioning factor 1.4 as the fraction overNum/overDen (Envoy's
// default): a level is fully healthy down to 1/1.4 ≈ 71.4% healthy.
const (
	overNum = 7
	overDen = 5
)

// GradedSlots is the size of the random-selection slot array of a graded
// frontend whose connections are split between levels: each level's share
// is rounded to whole slots (error at most half a slot, 0.05%).
const GradedSlots = 1000

// Level is one priority level's backends: Total counts every backend the
// level has (whatever its state or its node's), Healthy those new
// connections may use (active, node alive).
type Level struct {
	Healthy int
	Total   int
}

// LevelHealth is min(1, 1.4 × healthy/total) in PPM (rounded down), 0 for
// a level without backends.
func LevelHealth(l Level) uint32 {
	if l.Total <= 0 || l.Healthy <= 0 {
		return 0
	}
	h, t := uint64(min(l.Healthy, l.Total)), uint64(l.Total)
	for t > 1<<32 { // keep 7·PPM·h within 64 bits; the ratio barely moves
		h, t = h>>1, t>>1
	}
	if t == 0 {
		return 0
	}
	return uint32(min(PPM, overNum*PPM*h/(overDen*t)))
}

// PriorityLoad divides new connections between priority levels (first is
// highest) by Envoy's rule: every level has a health as LevelHealth; the
// sum of the healths, capped at 100%, is the normalised total health; in
// priority order each level takes its health scaled up by the normalised
// total (so the loads still add up to 100% when the levels together are
// less than fully healthy), but never more than what the levels before it
// left. What rounding down leaves goes to the first level with any health.
// The loads (PPM) add up to PPM, or are all 0 when no level has a healthy
// backend.
func PriorityLoad(levels []Level) []uint32 {
	health := make([]uint32, len(levels))
	for i, l := range levels {
		health[i] = LevelHealth(l)
	}
	return loads(health)
}

// loads is PriorityLoad of levels whose healths (PPM) are given.
func loads(healths []uint32) []uint32 {
	out := make([]uint32, len(healths))
	health := make([]uint64, len(healths))
	var sum uint64
	first := -1
	for i, h := range healths {
		health[i] = uint64(min(h, PPM))
		sum += health[i]
		if first < 0 && health[i] > 0 {
			first = i
		}
	}
	if first < 0 {
		return out
	}
	norm := min(sum, PPM)
	left := uint64(PPM)
	for i, h := range health {
		load := min(left, h*PPM/norm)
		out[i] = uint32(load)
		left -= load
	}
	out[first] += uint32(left)
	return out
}

// RemoteHealth is the remote level's health (PPM): each remote cluster's
// own health (LevelHealth of its healthy and total backends) weighted by
// its healthy backends, Σ healthy_c × health_c / Σ healthy_c (rounded
// down), 0 when no remote cluster has a usable backend. A cluster without
// a usable backend adds nothing: until a review found it, the remote
// clusters' backends were counted as one level, so a remote publishing
// thousands of terminating backends drew the level's health to ~0 and
// pulled connections back onto a failing local level, away from a healthy
// third cluster (TestGradedRemoteWithoutUsableBackendsAddsNoHealth).
func RemoteHealth(clusters []Level) uint32 {
	var sum, healthy uint64
	for _, c := range clusters {
		if h := LevelHealth(c); h > 0 {
			n := uint64(min(c.Healthy, c.Total))
			sum += n * uint64(h)
			healthy += n
		}
	}
	if healthy == 0 {
		return 0
	}
	return uint32(sum / healthy)
}

// Split is how a graded frontend divides new connections between clusters
// (what `filament service list` shows).
type Split struct {
	// LocalHealth is the local level's health (min(1, 1.4 ×
	// healthy/total), a fraction), RemoteHealth the remote level's: its
	// clusters' own healths weighted by their healthy backends.
	LocalHealth  float64 `json:"localHealth"`
	RemoteHealth float64 `json:"remoteHealth"`
	// Clusters: the local cluster first, then the remote ones by name.
	Clusters []ClusterShare `json:"clusters"`
	// Slots is the size of the datapath's selection table the split is
	// realised in (random slots or Maglev entries); 0 when nothing is
	// usable and connections are refused.
	Slots int `json:"slots"`
}

// ClusterShare is one cluster's part of a Split.
type ClusterShare struct {
	Cluster string `json:"cluster"`
	Healthy int    `json:"healthy"`
	Total   int    `json:"total"`
	// Share of new connections by the rule (a fraction).
	Share float64 `json:"share"`
	// Slots of the table that go to its backends: Slots/Split.Slots is the
	// share the datapath realises.
	Slots int `json:"slots"`

	ppm uint32
}

// usable says whether new connections may go to a backend.
func usable(v BackendView) bool { return v.State == StateActive && v.Healthy }

// GradedSplit computes the split of a frontend's backends (as Select
// lists them, sorted by cluster) between the local level (health
// LevelHealth of the local cluster's backends) and the remote level
// (health RemoteHealth of the remote clusters'); within the remote level
// each cluster's share is proportional to its healthy backends (largest
// remainder, ties to the earlier cluster). Slots are not filled in: the
// table composition does that.
func GradedSplit(views []BackendView, localCluster string) Split {
	byCluster := map[string]*ClusterShare{}
	sp := Split{Clusters: []ClusterShare{{Cluster: localCluster}}}
	var names []string
	for _, v := range views {
		cs := &sp.Clusters[0]
		if v.Cluster != localCluster {
			if byCluster[v.Cluster] == nil {
				byCluster[v.Cluster] = &ClusterShare{Cluster: v.Cluster}
				names = append(names, v.Cluster)
			}
			cs = byCluster[v.Cluster]
		}
		cs.Total++
		if usable(v) {
			cs.Healthy++
		}
	}
	slices.Sort(names)
	remote := make([]Level, 0, len(names))
	for _, n := range names {
		c := byCluster[n]
		sp.Clusters = append(sp.Clusters, *c)
		remote = append(remote, Level{Healthy: c.Healthy, Total: c.Total})
	}
	local := Level{Healthy: sp.Clusters[0].Healthy, Total: sp.Clusters[0].Total}
	lh, rh := LevelHealth(local), RemoteHealth(remote)
	load := loads([]uint32{lh, rh})
	sp.LocalHealth = float64(lh) / PPM
	sp.RemoteHealth = float64(rh) / PPM
	sp.Clusters[0].ppm = load[0]
	weights := make([]uint64, len(names))
	for i := range names {
		weights[i] = uint64(sp.Clusters[i+1].Healthy)
	}
	for i, p := range apportion(uint64(load[1]), weights) {
		sp.Clusters[i+1].ppm = uint32(p)
	}
	for i := range sp.Clusters {
		sp.Clusters[i].Share = float64(sp.Clusters[i].ppm) / PPM
	}
	return sp
}

// levelLoads returns the local and remote levels' loads of a split.
func (sp *Split) levelLoads() (local, remote uint64) {
	for i, c := range sp.Clusters {
		if i == 0 {
			local = uint64(c.ppm)
		} else {
			remote += uint64(c.ppm)
		}
	}
	return local, remote
}

// apportion divides n whole units in proportion to weights by the largest
// remainder method (ties to the lower index); all 0 when the weights are.
// Every part is within one unit of its exact quota.
func apportion(n uint64, weights []uint64) []uint64 {
	var sum uint64
	for _, w := range weights {
		sum += w
	}
	quota := make([]uint64, len(weights))
	if sum == 0 {
		return quota
	}
	for i, w := range weights {
		quota[i] = n * w
	}
	return largestRemainder(n, quota, sum)
}

// largestRemainder divides n whole units between parts whose exact quotas
// are quota[i]/den: each part its quota rounded down, then one more to
// the parts with the largest remainders (ties to the lower index; a part
// of quota 0 gets none) until n are given. n must be between the sum of
// the quotas rounded down and the sum rounded up (as when the quotas add
// up to n, or n is that sum rounded either way); then every part is
// within one unit of its quota. Otherwise the parts are n's apportioned
// by the quotas.
func largestRemainder(n uint64, quota []uint64, den uint64) []uint64 {
	out := make([]uint64, len(quota))
	rem := make([]uint64, len(quota))
	var given, positive uint64
	for i, q := range quota {
		out[i], rem[i] = q/den, q%den
		given += out[i]
		if rem[i] > 0 {
			positive++
		}
	}
	if given > n || n-given > positive {
		return apportion(n, quota)
	}
	left := n - given
	order := make([]int, len(quota))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		switch {
		case rem[a] > rem[b]:
			return -1
		case rem[a] < rem[b]:
			return 1
		}
		return 0
	})
	for _, i := range order[:left] {
		out[i]++
	}
	return out
}

// clusterSlots divides a table of n slots (or Maglev entries) between
// sp's clusters by their shares: first between the levels (largest
// remainder, so the local level is within one slot of its quota), then
// the remote level's between the remote clusters, each within one slot
// of its quota n × share. All 0 when no cluster has a share.
func clusterSlots(sp *Split, n uint64) []uint64 {
	out := make([]uint64, len(sp.Clusters))
	lload, rload := sp.levelLoads()
	if lload+rload == 0 {
		return out
	}
	level := apportion(n, []uint64{lload, rload})
	out[0] = level[0]
	quota := make([]uint64, len(sp.Clusters)-1)
	for i := range quota {
		quota[i] = n * uint64(sp.Clusters[i+1].ppm)
	}
	copy(out[1:], largestRemainder(level[1], quota, PPM))
	return out
}

// gradedBound is the most slots the random-selection table of a graded
// frontend listing views may have: what the budgets count for it (its
// local backends, GradedSlots at least, in MaxNamespaceSlots; each remote
// backend it lists in MaxRemoteBackends), and at most MaxBackends (the
// datapath counts a frontend's slots in 16 bits).
func gradedBound(views []BackendView, localCluster string) uint64 {
	var local, remote int
	for _, v := range views {
		if v.Cluster == localCluster {
			local++
		} else {
			remote++
		}
	}
	return uint64(min(MaxBackends, max(local, GradedSlots)+remote))
}

// gradedSize is the size of a graded frontend's random-selection table
// when both levels take connections: GradedSlots, or more where a cluster
// with a share has more usable backends than its part of that, the fewest
// slots that give each of them one (n × share ≥ usable), but at most
// bound.
func gradedSize(sp *Split, bound uint64) uint64 {
	n := uint64(GradedSlots)
	for _, c := range sp.Clusters {
		if c.ppm > 0 && c.Healthy > 0 {
			n = max(n, (uint64(c.Healthy)*PPM+uint64(c.ppm)-1)/uint64(c.ppm))
		}
	}
	return min(n, bound)
}

// spread divides one cluster's s slots between its usable backends addrs:
// evenly when there are enough (at most one slot apart, the extra ones to
// the first), otherwise one each to the first s in the order of a hash of
// their address, so neither address order nor the cluster's name decides
// which backends take connections.
func spread(s uint64, addrs []netip.AddrPort) []uint64 {
	if s >= uint64(len(addrs)) {
		return apportion(s, ones(len(addrs)))
	}
	out := make([]uint64, len(addrs))
	order := make([]int, len(addrs))
	rank := make([]uint64, len(addrs))
	for i, a := range addrs {
		order[i], rank[i] = i, addrHash(a)
	}
	slices.SortFunc(order, func(a, b int) int {
		if c := cmp.Compare(rank[a], rank[b]); c != 0 {
			return c
		}
		return addrs[a].Compare(addrs[b])
	})
	for _, i := range order[:s] {
		out[i] = 1
	}
	return out
}

// addrHash is a fixed hash of a backend's address (FNV-1a, then the
// splitmix64 finalizer): the same on every node.
func addrHash(a netip.AddrPort) uint64 {
	h := fnv.New64a()
	h.Write([]byte(a.String()))
	return maglev.Mix64(h.Sum64())
}

// byCluster returns the usable backends of each of sp's clusters (index
// as in sp.Clusters), in the views' (sorted) order; it zeroes the
// clusters' slots.
func byCluster(views []BackendView, sp *Split) [][]netip.AddrPort {
	index := map[string]int{}
	for i := range sp.Clusters {
		index[sp.Clusters[i].Cluster] = i
		sp.Clusters[i].Slots = 0
	}
	out := make([][]netip.AddrPort, len(sp.Clusters))
	for _, v := range views {
		if i, ok := index[v.Cluster]; ok && usable(v) {
			out[i] = append(out[i], v.Addr)
		}
	}
	return out
}

// levels returns the usable backends of the local level and of the
// remote level, in the views' (sorted) order, with each one's index in
// sp.Clusters; it zeroes the clusters' slots.
func levels(views []BackendView, localCluster string, sp *Split) (local, remote []netip.AddrPort, localCl, remoteCl []int) {
	index := map[string]int{}
	for i := range sp.Clusters {
		index[sp.Clusters[i].Cluster] = i
		sp.Clusters[i].Slots = 0
	}
	for _, v := range views {
		if !usable(v) {
			continue
		}
		if v.Cluster == localCluster {
			local, localCl = append(local, v.Addr), append(localCl, index[v.Cluster])
		} else {
			remote, remoteCl = append(remote, v.Addr), append(remoteCl, index[v.Cluster])
		}
	}
	return local, remote, localCl, remoteCl
}

// ComposeSlots builds the random-selection slot array of a graded frontend
// (a backend may fill several slots; the datapath picks a slot uniformly).
// When one level takes every connection the array is that level's usable
// backends once each, as a plain service's. Otherwise it has GradedSlots
// slots, or more (up to gradedBound) so that every usable backend of a
// cluster with a share has one; each cluster gets its share of them to
// within a slot (clusterSlots), spread over its usable backends (spread).
// Until a review found it, each level's slots were spread over the
// level's backends in (cluster, address) order, so with more remote
// backends than slots the cluster whose name sorts first took the whole
// remote level (TestGradedRandomFirstClusterTakesOnlyItsShare). It fills
// sp.Slots and the clusters' slots. Empty when nothing is usable.
func ComposeSlots(views []BackendView, localCluster string, sp *Split) []netip.AddrPort {
	usable := byCluster(views, sp)
	lload, rload := sp.levelLoads()
	var parts []uint64
	switch {
	case lload == 0 || rload == 0:
		parts = make([]uint64, len(usable))
		for i, addrs := range usable {
			if (i == 0 && lload > 0) || (i > 0 && rload > 0) {
				parts[i] = uint64(len(addrs))
			}
		}
	default:
		parts = clusterSlots(sp, gradedSize(sp, gradedBound(views, localCluster)))
	}
	var out []netip.AddrPort
	for i, addrs := range usable {
		for j, n := range spread(parts[i], addrs) {
			for range n {
				out = append(out, addrs[j])
			}
			sp.Clusters[i].Slots += int(n)
		}
	}
	sp.Slots = len(out)
	return out
}

func ones(n int) []uint64 {
	w := make([]uint64, n)
	for i := range w {
		w[i] = 1
	}
	return w
}

// ComposeMaglev builds the Maglev table (m entries, indexes into the
// returned backends: the usable local ones, then the usable remote ones)
// of a graded frontend. The first round(local load × m) entries come from
// a Maglev table of the local level's backends, the rest from one of the
// remote level's, so a flow's backend is as consistent as Maglev makes it
// within its level and a change of the split moves only the flows whose
// entries change level. When one level takes every connection it is that
// level's plain table. It fills sp.Slots and the clusters' slots.
func ComposeMaglev(views []BackendView, localCluster string, sp *Split, m uint32) ([]netip.AddrPort, []int32, error) {
	local, remote, localCl, remoteCl := levels(views, localCluster, sp)
	lload, rload := sp.levelLoads()
	sp.Slots = 0
	var backends []netip.AddrPort
	var cl []int
	var table []int32
	switch {
	case lload == 0 && rload == 0:
		return nil, nil, nil
	case rload == 0:
		backends, cl = local, localCl
	case lload == 0:
		backends, cl = remote, remoteCl
	}
	if backends != nil {
		t, err := MaglevTable(backends, m)
		if err != nil {
			return nil, nil, err
		}
		table = t
	} else {
		lt, err := MaglevTable(local, m)
		if err != nil {
			return nil, nil, err
		}
		rt, err := MaglevTable(remote, m)
		if err != nil {
			return nil, nil, err
		}
		k := int(apportion(uint64(m), []uint64{lload, rload})[0])
		table = make([]int32, m)
		copy(table[:k], lt[:k])
		off := int32(len(local))
		for i := k; i < int(m); i++ {
			table[i] = rt[i] + off
		}
		backends, cl = append(local, remote...), append(localCl, remoteCl...)
	}
	for _, x := range table {
		sp.Clusters[cl[x]].Slots++
	}
	sp.Slots = len(table)
	return backends, table, nil
}
