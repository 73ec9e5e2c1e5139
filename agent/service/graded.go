package service

import (
	"net/netip"
	"slices"
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
	out := make([]uint64, len(weights))
	var sum uint64
	for _, w := range weights {
		sum += w
	}
	if sum == 0 {
		return out
	}
	rem := make([]uint64, len(weights))
	left := n
	for i, w := range weights {
		out[i] = n * w / sum
		rem[i] = n * w % sum
		left -= out[i]
	}
	order := make([]int, len(weights))
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
	for _, i := range order {
		if left == 0 {
			break
		}
		if weights[i] > 0 {
			out[i]++
			left--
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
// backends once each, as a plain service's; otherwise it has GradedSlots
// slots, each level's share rounded to whole slots and spread evenly over
// its usable backends (they differ by at most one slot). It fills
// sp.Slots and the clusters' slots. Empty when nothing is usable.
func ComposeSlots(views []BackendView, localCluster string, sp *Split) []netip.AddrPort {
	local, remote, localCl, remoteCl := levels(views, localCluster, sp)
	lload, rload := sp.levelLoads()
	parts := []uint64{0, 0}
	switch {
	case lload == 0 && rload == 0:
	case rload == 0:
		parts[0] = uint64(len(local))
	case lload == 0:
		parts[1] = uint64(len(remote))
	default:
		parts = apportion(GradedSlots, []uint64{lload, rload})
	}
	out := make([]netip.AddrPort, 0, parts[0]+parts[1])
	for i, lvl := range [][]netip.AddrPort{local, remote} {
		cl := [][]int{localCl, remoteCl}[i]
		each := apportion(parts[i], ones(len(lvl)))
		for j, b := range lvl {
			for range each[j] {
				out = append(out, b)
			}
			sp.Clusters[cl[j]].Slots += int(each[j])
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
