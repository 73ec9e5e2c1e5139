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
// remote level, whose health is its clusters' own (RemoteHealth) and whose
// clusters take it in proportion to their healthy backends. The tables
// give each cluster its share to within one slot or Maglev entry,
// whatever the number, states or addresses of a remote's backends (a
// remote cluster may be hostile). Everything here is deterministic integer arithmetic in parts
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

// Level is one priority level's backends, or one remote cluster's: Total
// counts every backend it has (whatever its state or its node's), Healthy
// those new connections may use (active, node alive).
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

// RemoteHealth is the remote level's health (PPM): its best cluster's,
// max_c LevelHealth(c), 0 when no remote cluster has a usable backend. A
// remote cluster can only raise it, and raising it only moves load toward
// the remote level, whose clusters share it by their healthy backends,
// whatever their own health (TestGradedRemoteShareIgnoresClusterHealth:
// bravo, 1 usable of 1,000, takes as much as edge, 1 of 1).
// Until a review found it the remote clusters' backends were counted as
// one level, so a remote publishing thousands of terminating backends
// drew the level's health to ~0 and pulled connections back onto a
// failing local level, away from a healthy third cluster
// (TestGradedRemoteWithoutUsableBackendsAddsNoHealth); then the clusters'
// healths were weighted by their healthy backends, a count the remote
// chooses too: 100 active and 60,000 terminating backends drew it to 9.3%
// (TestGradedRemoteHealthIsItsBestCluster).
func RemoteHealth(clusters []Level) uint32 {
	var best uint32
	for _, c := range clusters {
		best = max(best, LevelHealth(c))
	}
	return best
}

// Split is how a graded frontend divides new connections between clusters
// (what `filament service list` shows).
type Split struct {
	// LocalHealth is the local level's health (min(1, 1.4 ×
	// healthy/total), a fraction), RemoteHealth the remote level's: its
	// healthiest cluster's.
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
	// listed counts its usable backends the frontend lists (its share's
	// weight); Healthy may count more, those left out for the node's
	// remote-backend room.
	listed int
}

// usable says whether new connections may go to a backend.
func usable(v BackendView) bool { return v.State == StateActive && v.Healthy }

// GradedSplit computes the split of a frontend's backends (as Select
// lists them, sorted by cluster) between the local level (health
// LevelHealth of the local cluster's backends) and the remote level
// (health RemoteHealth of the remote clusters'); within the remote level
// each cluster's share is proportional to its healthy backends listed
// (largest remainder, ties to the earlier cluster). Slots are not filled
// in: the table composition does that.
func GradedSplit(views []BackendView, localCluster string) Split {
	return gradedSplit(views, localCluster, nil)
}

// gradedSplit is GradedSplit taking each remote cluster's health (and
// the counts the status shows) from what it publishes (published, by
// cluster; selectBounded's), not from the backends listed: past the
// node's remote-backend room a frontend lists usable backends first, so
// the listed ones look healthier than the cluster is, and nodes with
// different rooms would build different splits. Until a review found it
// bravo, 10 active and 990 terminating, had health 0.70 with a room of
// 20 and 0.014 with 1,000 (TestGradedRemoteHealthDoesNotChangeWithTheRoom).
// A cluster none of whose usable backends is listed adds no health:
// nothing could take its share.
func gradedSplit(views []BackendView, localCluster string, published map[string]Level) Split {
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
			cs.listed++
		}
	}
	slices.Sort(names)
	remote := make([]Level, 0, len(names))
	for _, n := range names {
		c := byCluster[n]
		if p, ok := published[n]; ok {
			c.Healthy, c.Total = p.Healthy, p.Total
		}
		sp.Clusters = append(sp.Clusters, *c)
		if c.listed > 0 {
			remote = append(remote, Level{Healthy: c.Healthy, Total: c.Total})
		}
	}
	local := Level{Healthy: sp.Clusters[0].Healthy, Total: sp.Clusters[0].Total}
	lh, rh := LevelHealth(local), RemoteHealth(remote)
	load := loads([]uint32{lh, rh})
	sp.LocalHealth = float64(lh) / PPM
	sp.RemoteHealth = float64(rh) / PPM
	sp.Clusters[0].ppm = load[0]
	weights := make([]uint64, len(names))
	for i := range names {
		weights[i] = uint64(sp.Clusters[i+1].listed)
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
		if c.ppm > 0 && c.listed > 0 {
			n = max(n, (uint64(c.listed)*PPM+uint64(c.ppm)-1)/uint64(c.ppm))
		}
	}
	return min(n, bound)
}

// spread divides one cluster's s slots between its usable backends addrs
// evenly (at most one slot apart), the extra ones to the first in the
// order of a hash of their address (one each to the first s when there
// are fewer slots than backends), so neither the order they are listed
// in, nor address order, nor the cluster's name decides which backends
// take more connections. Until a review found it the extra slots went to
// the first backends as listed (TestGradedTablesIgnoreListingOrder).
func spread(s uint64, addrs []netip.AddrPort) []uint64 {
	out := make([]uint64, len(addrs))
	if len(addrs) == 0 {
		return out
	}
	n := uint64(len(addrs))
	for k, i := range hashOrder(addrs) {
		out[i] = s / n
		if uint64(k) < s%n {
			out[i]++
		}
	}
	return out
}

// hashOrder is the indexes of addrs in the order of their addrHash (then
// of the address): the same on every node whatever order they come in.
func hashOrder(addrs []netip.AddrPort) []int {
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
	return order
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

// ComposeMaglev builds the Maglev table (m entries, indexes into the
// returned backends: the usable local ones, then the usable remote ones)
// of a graded frontend. When only the local level takes connections it is
// the local backends' plain table. Otherwise the first k entries, k the
// local level's part of m (clusterSlots), come from a Maglev table of the
// local backends and the rest from one of the remote backends, so within
// a level a flow keeps its backend as Maglev does and a change of the
// split moves the flows of the entries that change level; then the
// remote entries are balanced between the remote clusters (balance), so
// each cluster has its share to within one entry whatever its backends'
// preference lists. Until a review found it they were not: Maglev's
// hashes are public, so a remote could pick a backend address whose
// entries of the remote table lay contiguous from k, all of them used,
// and take 6.2 times its share (TestGradedMaglevGroundBackendTakesOnlyItsShare).
// It fills sp.Slots and the clusters' slots.
func ComposeMaglev(views []BackendView, localCluster string, sp *Split, m uint32) ([]netip.AddrPort, []int32, error) {
	usable := byCluster(views, sp)
	lload, rload := sp.levelLoads()
	sp.Slots = 0
	if lload == 0 && rload == 0 {
		return nil, nil, nil
	}
	local := usable[0]
	if rload == 0 {
		table, err := MaglevTable(local, m)
		if err != nil {
			return nil, nil, err
		}
		sp.Clusters[0].Slots, sp.Slots = len(table), len(table)
		return local, table, nil
	}
	want := clusterSlots(sp, uint64(m))
	k := int(want[0])
	var backends []netip.AddrPort
	var cl []int // each backend's cluster (index in sp.Clusters)
	if lload > 0 {
		backends = append(backends, local...)
		cl = make([]int, len(local))
	}
	off := len(backends)
	for c := 1; c < len(usable); c++ {
		for _, b := range usable[c] {
			backends, cl = append(backends, b), append(cl, c)
		}
	}
	table, err := MaglevTable(backends[off:], m)
	if err != nil {
		return nil, nil, err
	}
	for i := range table {
		table[i] += int32(off)
	}
	if k > 0 {
		lt, err := MaglevTable(local, m)
		if err != nil {
			return nil, nil, err
		}
		copy(table[:k], lt[:k])
	}
	want[0] = 0 // the remote entries' targets
	if err := balance(table[k:], k, backends, cl, want, m); err != nil {
		return nil, nil, err
	}
	for _, x := range table {
		sp.Clusters[cl[x]].Slots++
	}
	sp.Slots = len(table)
	return backends, table, nil
}

// balance makes the entries part (indexes into backends whose clusters
// are cl; part begins at entry from of a table of m entries) give each
// cluster c exactly want[c] entries, want adding up to len(part): a
// cluster over its part keeps its first entries and gives the rest up;
// the clusters under theirs, in order, take those given up, entry i going
// to the backend that entry i of a Maglev table of the cluster's usable
// backends names. So honest clusters, whose Maglev entries are about
// their share, lose or gain a few, where a cluster's backends' entries
// lie does not change what it gets, and the entries a cluster receives
// keep their backend as Maglev does when the cluster's backends change
// (and whatever order they are listed in). Until a review found it a
// received entry went to backend hash(i) mod the cluster's count, so one
// pod more in a cluster moved nearly all the entries it had received,
// which a remote choosing its backends' preference lists made most of
// its entries (TestGradedMaglevPodChurnMovesWhatMaglevMoves). The
// cluster's table has receiverSize entries, entry i of the frontend's
// table reading entry i mod that: until a review found it each receiving
// cluster's table had m entries, beside 255 remote clusters 28 ms at
// m = 16,381 (209 ms at 131,071) on every apply of the frontend, where
// the frontend's own tables took 1.2 ms (7.2 ms); now 2.0 ms (7.7 ms)
// (BenchmarkComposeMaglevManyClusters, docs/benchmarks.md;
// TestGradedMaglevManyClustersBoundedGarbage).
func balance(part []int32, from int, backends []netip.AddrPort, cl []int, want []uint64, m uint32) error {
	members := make([][]int32, len(want))
	for i, c := range cl {
		members[c] = append(members[c], int32(i))
	}
	have := make([]uint64, len(want))
	var given []int
	for i, x := range part {
		if c := cl[x]; have[c] < want[c] {
			have[c]++
		} else {
			given = append(given, i)
		}
	}
	for c := range want {
		if have[c] >= want[c] || len(given) == 0 || len(members[c]) == 0 {
			continue
		}
		addrs := make([]netip.AddrPort, len(members[c]))
		for j, x := range members[c] {
			addrs[j] = backends[x]
		}
		mc := receiverSize(len(addrs), m)
		ct, err := MaglevTable(addrs, mc)
		if err != nil {
			return err
		}
		for ; have[c] < want[c] && len(given) > 0; have[c]++ {
			i := given[0]
			given = given[1:]
			part[i] = members[c][ct[uint32(from+i)%mc]]
		}
	}
	return nil
}

// receiverSize is the size of the Maglev table balance places a
// cluster's received entries with, the cluster having n usable backends,
// in a frontend table of m entries: at least 100 entries a backend (as
// Maglev asks of a table, so a pod more or less moves about its part of
// them) for n rounded up to a power of two, so the size, and with it
// where every received entry goes, changes only when the count crosses a
// power of two; at most m.
func receiverSize(n int, m uint32) uint32 {
	p := uint32(1)
	for p < uint32(n) && p < m {
		p <<= 1
	}
	if uint64(p)*100 >= uint64(m) {
		return m
	}
	return min(maglev.SizeAtLeast(100*p), m)
}
