package service

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"slices"
	"testing"

	"github.com/filament-net/filament/agent/service/maglev"
)

// Graded failover against a hostile remote cluster: a remote cluster
// publishes whatever backends it likes (their number, states, addresses
// and ports) in the mesh, so none of that may take it past its share by
// the rule, nor move the local level's share.

// many returns n backends of cluster in state, addresses prefix.<i/250>.<i%250+1>:80.
func many(cluster, prefix string, n int, state string) []BackendView {
	out := make([]BackendView, 0, n)
	for i := range n {
		a := netip.MustParseAddrPort(fmt.Sprintf("%s.%d.%d:80", prefix, i/250, i%250+1))
		out = append(out, BackendView{Addr: a, Cluster: cluster, State: state, Healthy: true})
	}
	return out
}

// join concatenates groups of backends and sorts them as Select does.
func join(groups ...[]BackendView) []BackendView {
	var out []BackendView
	for _, g := range groups {
		out = append(out, g...)
	}
	sortBackends(out)
	return out
}

// The attack: a remote cluster publishes 5,000 terminating backends and
// no usable one. Until the review, the remote clusters formed one level
// whose health counted every remote backend, so the remote level's
// health fell to ~0, the levels' total health was normalised, and the
// local level, 3 of 10 healthy, took 99% of new connections instead of
// 42%, away from a healthy third cluster. The remote level's health is
// now its best cluster's: a cluster without a usable backend adds
// nothing.
func TestGradedRemoteWithoutUsableBackendsAddsNoHealth(t *testing.T) {
	local := append(many("local", "10.1", 3, StateActive), many("local", "10.9", 7, StateTerminating)...)
	bravo := many("bravo", "10.2", 10, StateActive)
	before := GradedSplit(join(local, bravo), "local")
	after := GradedSplit(join(local, bravo, many("hostile", "10.3", 5000, StateTerminating)), "local")
	if got := shares(before); got != "local 3/10 420000, bravo 10/10 580000" {
		t.Fatalf("without the hostile cluster: %s", got)
	}
	if got := shares(after); got != "local 3/10 420000, bravo 10/10 580000, hostile 0/5000 0" {
		t.Fatalf("a remote with 5,000 terminating backends changed the split: %s", got)
	}
	if after.RemoteHealth != 1 {
		t.Fatalf("remote health %v, want bravo's 1", after.RemoteHealth)
	}
	// The same with the hostile cluster's backends on dead nodes.
	dead := many("hostile", "10.3", 5000, StateActive)
	for i := range dead {
		dead[i].Healthy = false
	}
	if got := shares(GradedSplit(join(local, bravo, dead), "local")); got != "local 3/10 420000, bravo 10/10 580000, hostile 0/5000 0" {
		t.Fatalf("a remote with 5,000 backends on dead nodes changed the split: %s", got)
	}
}

// The remote level's health is its best cluster's, max_c health_c,
// health_c = min(1, 1.4 × healthy_c/total_c): a remote cluster can only
// raise it, which moves load toward the remote level, whose clusters
// share it by their healthy backends. Until a review found it the
// healths were weighted by healthy backends, a count the remote chooses:
// a remote with 100 active and 60,000 terminating backends drew the
// level's health to 9.3%, and a local level 3 of 10 healthy kept 82% of
// new connections instead of 42% (bravo, 10 of 10 healthy, 1.6%).
func TestGradedRemoteHealthIsItsBestCluster(t *testing.T) {
	local := append(many("c1", "10.1", 3, StateActive), many("c1", "10.9", 7, StateTerminating)...)
	tests := []struct {
		name   string
		views  []BackendView
		health float64
		want   string
	}{
		{"a remote mostly terminating", join(local, many("aaa", "10.3", 100, StateActive), many("aaa", "10.4", 60000, StateTerminating),
			many("bravo", "10.2", 10, StateActive)), 1, "c1 3/10 420000, aaa 100/60100 527273, bravo 10/10 52727"},
		// c2 46.7%, c3 100%: the level's 100%.
		{"two remotes", views("c1:3/10", "c2:1/3", "c3:2/2"), 1, "c1 3/10 420000, c2 1/3 193333, c3 2/2 386667"},
		// c2 35%, c3 28%: the level's 35%; local 42%: normalised by 77%.
		{"two remotes poorly healthy", views("c1:3/10", "c2:1/4", "c3:1/5"), 0.35, "c1 3/10 545455, c2 1/4 227273, c3 1/5 227272"},
		// Local 1 of 4 (35%), c2 1 of 4 (35%), c3 0 of 100: the remote
		// level's health is c2's, 35%; normalised, 50/50. Counting c3's
		// backends it was 1.4 × 1/104 = 1.3% and the local level took 96%.
		{"a remote without usable backends", views("c1:1/4", "c2:1/4", "c3:0/100"), 0.35, "c1 1/4 500000, c2 1/4 500000, c3 0/100 0"},
		{"no remote backends", views("c1:1/4"), 0, "c1 1/4 1000000"},
		{"remotes without usable backends", views("c1:1/4", "c2:0/3", "c3:0/1"), 0, "c1 1/4 1000000, c2 0/3 0, c3 0/1 0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sp := GradedSplit(tc.views, "c1")
			if got := shares(sp); got != tc.want {
				t.Fatalf("split %s, want %s", got, tc.want)
			}
			if sp.RemoteHealth != tc.health {
				t.Fatalf("remote health %v, want %v", sp.RemoteHealth, tc.health)
			}
		})
	}
}

// tableShares checks a graded table (random slots, or a Maglev table as
// the addresses its entries name: entryAddrs) against the split it was
// composed for, counting each cluster's slots from the table and the
// views, not from the counts the composition fills in: every slot holds
// a usable backend of the views, each cluster's slots are within one of
// its quota n × share and the level's remote slots within one of the
// remote level's, and the split's counts (what the status shows) are the
// table's. What it finds wrong, one line each.
func tableShares(views []BackendView, sp Split, table []netip.AddrPort) []string {
	var bad []string
	cluster := map[netip.AddrPort]string{}
	for _, v := range views {
		if usable(v) {
			cluster[v.Addr] = v.Cluster
		}
	}
	count := map[string]int{}
	for _, a := range table {
		c, ok := cluster[a]
		if !ok {
			bad = append(bad, fmt.Sprintf("slot for %s, not a usable backend", a))
			continue
		}
		count[c]++
	}
	n := len(table)
	if sp.Slots != n {
		bad = append(bad, fmt.Sprintf("split says %d slots, the table has %d", sp.Slots, n))
	}
	var remote, remotePPM float64
	for i, c := range sp.Clusters {
		got := count[c.Cluster]
		if c.Slots != got {
			bad = append(bad, fmt.Sprintf("split says %s has %d slots, the table gives it %d", c.Cluster, c.Slots, got))
		}
		exact := float64(c.ppm) / PPM * float64(n)
		if d := float64(got) - exact; d >= 1 || d <= -1 {
			bad = append(bad, fmt.Sprintf("%s has %d of %d slots (%.4f), its share by the rule is %.4f (%.2f slots)",
				c.Cluster, got, n, float64(got)/float64(n), c.Share, exact))
		}
		if i > 0 {
			remote += float64(got)
			remotePPM += float64(c.ppm)
		}
	}
	if d := remote - remotePPM/PPM*float64(n); d > 1 || d < -1 {
		bad = append(bad, fmt.Sprintf("the remote level has %.0f of %d slots, its share %.2f", remote, n, remotePPM/PPM*float64(n)))
	}
	return bad
}

// entryAddrs is the backend each entry of a Maglev table names.
func entryAddrs(backends []netip.AddrPort, table []int32) []netip.AddrPort {
	out := make([]netip.AddrPort, len(table))
	for i, x := range table {
		if x >= 0 && int(x) < len(backends) {
			out[i] = backends[x]
		}
	}
	return out
}

// differ counts the entries in which two tables of the same size differ.
func differ(a, b []netip.AddrPort) int {
	n := 0
	for i := range a {
		if a[i] != b[i] {
			n++
		}
	}
	return n
}

// realised checks a graded table against its split (tableShares).
func realised(t *testing.T, what string, views []BackendView, sp Split, table []netip.AddrPort) {
	t.Helper()
	for _, b := range tableShares(views, sp, table) {
		t.Errorf("%s: %s", what, b)
	}
}

// The attack: a remote cluster named "aaa" publishes 600 backends beside
// a remote cluster of 5,000. Until the review, each level's 1,000 slots
// were spread over its usable backends in (cluster, address) order, one
// slot each to the first ones when there were more backends than slots,
// so the cluster whose name sorts first took the whole remote level (58%
// of new connections, 6.2% by the rule) and the cluster of 5,000 none.
// Now each cluster gets its share of the table (within a slot), and the
// table grows so every usable backend has a slot as far as the frontend's
// budget allows (here not: 9,656 slots would be needed, the budget is
// max(10, 1,000) + 5,600); past it, which of a cluster's backends hold a
// slot is decided by a hash of their address, not by address order.
func TestGradedRandomFirstClusterTakesOnlyItsShare(t *testing.T) {
	local := append(many("local", "10.1", 3, StateActive), many("local", "10.9", 7, StateTerminating)...)
	bravo := many("bravo", "10.2", 5000, StateActive)
	v := join(local, many("aaa", "10.3", 600, StateActive), bravo)
	sp := GradedSplit(v, "local")
	slots := ComposeSlots(v, "local", &sp)
	realised(t, "aaa and bravo", v, sp, slots)
	if len(slots) != 6600 {
		t.Fatalf("%d slots, want the budget's 6,600", len(slots))
	}
	if got := fmt.Sprint(sp.Clusters[0].Slots, sp.Clusters[1].Slots, sp.Clusters[2].Slots); got != "2772 410 3418" {
		t.Errorf("cluster slots %s, want 2772 410 3418", got)
	}
	// Each backend of a cluster holds at most one slot more than another;
	// of bravo's, those holding one are spread over its addresses: about
	// half of its 3,418 slots in the lower half of its addresses (5σ of a
	// coin tossed for each: 146).
	per := perBackend(slots)
	lower := 0
	for i, b := range bravo {
		if n := per[b.Addr]; n > 1 {
			t.Fatalf("bravo %s has %d slots", b.Addr, n)
		} else if i < len(bravo)/2 {
			lower += n
		}
	}
	if lower < 3418/2-146 || lower > 3418/2+146 {
		t.Errorf("%d of bravo's 3,418 slots in the lower half of its addresses", lower)
	}
}

// The table grows past 1,000 slots so each usable backend of a cluster
// with a share has one, while each cluster keeps its share to a slot.
func TestGradedRandomEveryUsableBackendHasASlot(t *testing.T) {
	tests := []struct {
		name  string
		views []BackendView
		slots int
	}{
		// 580,000 ppm over 1,000 remote backends: 1,725 slots.
		{"remote backends", join(append(many("local", "10.1", 3, StateActive), many("local", "10.9", 7, StateTerminating)...),
			many("aaa", "10.3", 100, StateActive), many("bravo", "10.2", 900, StateActive)), 1725},
		// Local 1 of 3,000: 466 ppm, a slot of 2,146 (of 1,000 it had none).
		{"a local backend", join(append(many("local", "10.1", 1, StateActive), many("local", "10.9", 2999, StateTerminating)...),
			many("bravo", "10.2", 2, StateActive)), 2146},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sp := GradedSplit(tc.views, "local")
			slots := ComposeSlots(tc.views, "local", &sp)
			if len(slots) != tc.slots {
				t.Fatalf("%d slots, want %d", len(slots), tc.slots)
			}
			realised(t, tc.name, tc.views, sp, slots)
			per := perBackend(slots)
			for _, b := range tc.views {
				if usable(b) && per[b.Addr] == 0 {
					t.Fatalf("%s %s has no slot", b.Cluster, b.Addr)
				}
			}
		})
	}
}

// ground finds a backend address of 10.3.0.0/16 (any port) whose Maglev
// preference list in a table of m entries has skip 1 and starts in
// [lo, lo+window): its entries of a full table are contiguous from there.
// Maglev's hashes are public, so a remote cluster can do this for its
// pods' addresses or its own target ports.
func ground(t *testing.T, m, lo, window uint32) netip.AddrPort {
	t.Helper()
	for port := 1; port < 65536; port++ {
		for x := range 65536 {
			a := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 3, byte(x >> 8), byte(x)}), uint16(port))
			if off, skip := maglev.Permutation(a.String(), m); skip == 1 && off >= lo && off < lo+window {
				return a
			}
		}
	}
	t.Fatal("no address found")
	return netip.AddrPort{}
}

// grounds finds n backend addresses of 10.3.0.0/16 (any port) whose
// Maglev preference lists in a table of m entries have skip at most
// maxSkip and start spread over [lo, hi), the j-th in the first quarter
// of the j-th of n equal parts: their entries of a full table lie
// together in [lo, hi), as a remote cluster choosing its pods' addresses
// or ports can place them.
func grounds(t *testing.T, m, lo, hi, maxSkip uint32, n int) []BackendView {
	t.Helper()
	step := (hi - lo) / uint32(n)
	var out []BackendView
	for port := 1; port < 65536 && len(out) < n; port++ {
		for x := 0; x < 65536 && len(out) < n; x++ {
			a := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 3, byte(x >> 8), byte(x)}), uint16(port))
			start := lo + uint32(len(out))*step
			if off, skip := maglev.Permutation(a.String(), m); skip <= maxSkip && off >= start && off < start+step/4 {
				out = append(out, BackendView{Addr: a, Cluster: "hostile", State: StateActive, Healthy: true})
			}
		}
	}
	if len(out) < n {
		t.Fatalf("found %d of %d addresses", len(out), n)
	}
	return out
}

// evenWithin checks that each usable backend of the given clusters holds
// about its part of its cluster's slots of table: the cluster's slots
// over its usable backends, within tol of that (a fraction) and one
// slot. The entries balance hands a cluster must be spread over its
// backends as Maglev spreads them, not given to a few.
func evenWithin(t *testing.T, what string, views []BackendView, table []netip.AddrPort, tol float64, clusters ...string) {
	t.Helper()
	per := perBackend(table)
	got, n := map[string]int{}, map[string]int{}
	for _, v := range views {
		if usable(v) {
			got[v.Cluster] += per[v.Addr]
			n[v.Cluster]++
		}
	}
	for _, v := range views {
		if !usable(v) || !slices.Contains(clusters, v.Cluster) {
			continue
		}
		quota := float64(got[v.Cluster]) / float64(n[v.Cluster])
		if d := float64(per[v.Addr]) - quota; d > tol*quota+1 || d < -tol*quota-1 {
			t.Errorf("%s: %s %s holds %d slots, its part of its cluster's %d is %.1f", what, v.Cluster, v.Addr, per[v.Addr], got[v.Cluster], quota)
		}
	}
}

// The attack: a remote cluster's backend whose Maglev preference list
// starts just past the local level's entries, with skip 1. Until the
// review, entries [k, m) of a graded Maglev table were copied from a full
// Maglev table of the remote level, so that backend's entries, contiguous
// from k, all fell in the used range: with local 9 of 14 healthy its
// cluster took 6.2% of the table for a 1% share, with 3 of 10 10% for
// 5.8%, at the expense of the honest remote cluster. Each cluster's
// entries are now its share to within one entry, whatever its backends'
// preference lists.
func TestGradedMaglevGroundBackendTakesOnlyItsShare(t *testing.T) {
	const m = maglev.DefaultSize
	for _, tc := range []struct {
		healthy, total int
		k              uint32 // the local level's entries
	}{{9, 14, 14743}, {3, 10, 6880}} {
		name := fmt.Sprintf("local %d of %d", tc.healthy, tc.total)
		local := append(many("local", "10.1", tc.healthy, StateActive), many("local", "10.9", tc.total-tc.healthy, StateTerminating)...)
		g := ground(t, m, tc.k, 200)
		v := join(local, many("bravo", "10.2", 9, StateActive), []BackendView{{Addr: g, Cluster: "hostile", State: StateActive, Healthy: true}})
		sp := GradedSplit(v, "local")
		backends, table, err := ComposeMaglev(v, "local", &sp, m)
		if err != nil {
			t.Fatal(err)
		}
		if sp.Clusters[0].Slots != int(tc.k) {
			t.Fatalf("%s: %d local entries, want %d", name, sp.Clusters[0].Slots, tc.k)
		}
		realised(t, name, v, sp, entryAddrs(backends, table))
		evenWithin(t, name, v, entryAddrs(backends, table), 0.15, "local", "bravo")
		for _, x := range table {
			if x < 0 || int(x) >= len(backends) {
				t.Fatalf("%s: entry %d of %d backends", name, x, len(backends))
			}
		}
	}
}

// Balancing the remote clusters keeps what the level split gave Maglev: a
// change of the split (3 of 10 local healthy to 3 of 12: 42% to 35%)
// moves the flows of the 1,147 entries that change level and few more:
// at most m/500 (32) more with honest remote clusters, whose entries of
// the remote table are about their shares, m/100 (163) more beside the
// ground backend of the test above, whose surplus is handed to the
// others anew.
func TestGradedMaglevSplitChangeMovesFewFlows(t *testing.T) {
	const m = maglev.DefaultSize
	g := []BackendView{{Addr: ground(t, m, 6880, 200), Cluster: "hostile", State: StateActive, Healthy: true}}
	for _, tc := range []struct {
		name  string
		third []BackendView
		extra int
	}{{"honest", many("c3", "10.4", 5, StateActive), m / 500}, {"ground backend", g, m / 100}} {
		compose := func(total int) ([]netip.AddrPort, []int32, Split) {
			local := append(many("local", "10.1", 3, StateActive), many("local", "10.9", total-3, StateTerminating)...)
			v := join(local, many("bravo", "10.2", 9, StateActive), many("dora", "10.5", 4, StateActive), tc.third)
			sp := GradedSplit(v, "local")
			b, table, err := ComposeMaglev(v, "local", &sp, m)
			if err != nil {
				t.Fatal(err)
			}
			realised(t, tc.name, v, sp, entryAddrs(b, table))
			evenWithin(t, tc.name, v, entryAddrs(b, table), 0.15, "local", "bravo", "dora", "c3")
			return b, table, sp
		}
		b1, t1, sp1 := compose(10)
		b2, t2, sp2 := compose(12)
		moved := 0
		for i := range t1 {
			if b1[t1[i]] != b2[t2[i]] {
				moved++
			}
		}
		if change := sp1.Clusters[0].Slots - sp2.Clusters[0].Slots; change != 1147 || moved < change || moved > change+tc.extra {
			t.Errorf("%s: %d entries changed level, %d moved, at most %d more", tc.name, change, moved, tc.extra)
		}
	}
}

// With every local backend down the remote level takes everything, its
// plain Maglev table balanced between its clusters too: with more
// backends than entries Maglev gives one entry each to the backends first
// in name order, so a remote whose addresses sort first ("10.0.…", 300
// backends, 13% by the rule) took the whole table from a cluster of 2,000.
func TestGradedMaglevAllRemoteClustersGetTheirShare(t *testing.T) {
	const m = 251
	v := join(many("local", "10.9", 10, StateTerminating), many("aaa", "10.0", 300, StateActive), many("bravo", "10.2", 2000, StateActive))
	sp := GradedSplit(v, "local")
	backends, table, err := ComposeMaglev(v, "local", &sp, m)
	if err != nil {
		t.Fatal(err)
	}
	realised(t, "all remote", v, sp, entryAddrs(backends, table))
	if len(backends) != 2300 {
		t.Fatalf("%d backends, want the 2,300 remote ones", len(backends))
	}
}

// The random table stays within MaxBackends slots (the datapath counts a
// frontend's slots in 16 bits; UpsertService refuses more) however many
// slots the split would want: here local 3 of 10 beside 65,525 usable
// remote backends (the most Select lists beside 10 local ones) would
// want 112,975 slots for each to have one, and the budgets' bound,
// max(10, 1,000) + 65,525, is past MaxBackends.
func TestGradedRandomTableWithinMaxBackends(t *testing.T) {
	local := append(many("local", "10.1", 3, StateActive), many("local", "10.9", 7, StateTerminating)...)
	remote := make([]BackendView, 0, MaxBackends-len(local))
	a := netip.MustParseAddr("10.2.0.1")
	for range MaxBackends - len(local) {
		remote = append(remote, BackendView{Addr: netip.AddrPortFrom(a, 80), Cluster: "bravo", State: StateActive, Healthy: true})
		a = a.Next()
	}
	v := join(local, remote)
	sp := GradedSplit(v, "local")
	slots := ComposeSlots(v, "local", &sp)
	if len(slots) != MaxBackends {
		t.Fatalf("%d slots, want MaxBackends (%d)", len(slots), MaxBackends)
	}
	realised(t, "65,525 remote backends", v, sp, slots)
}

// The attack on balance: a remote cluster's backends whose Maglev
// preference lists start spread over the remote entries with skip 1 or 2
// (grounds) hold far more of them than their share, so balance hands the
// surplus to the honest cluster beside it; until a review found it each
// entry so received went to backend hash(entry) mod the cluster's usable
// count, so one pod added to the honest cluster moved nearly all of them
// (bravo 20 to 21: 30% of its entries beside 10 such backends, where
// Maglev moves 5.5%). Each received entry now goes to the backend a
// Maglev table of the cluster's usable backends gives it: the pod moves
// what Maglev moves (at most 2 points more of bravo's entries), and the
// received entries are spread over the cluster's backends as Maglev
// spreads them (each within 15% of its part).
func TestGradedMaglevPodChurnMovesWhatMaglevMoves(t *testing.T) {
	const m = maglev.DefaultSize
	const k = 6880 // local 3 of 10: 42%
	hostile := grounds(t, m, k, m-300, 2, 10)
	local := append(many("local", "10.1", 3, StateActive), many("local", "10.9", 7, StateTerminating)...)
	compose := func(n int) []netip.AddrPort {
		v := join(local, many("bravo", "10.2", n, StateActive), hostile)
		sp := GradedSplit(v, "local")
		backends, table, err := ComposeMaglev(v, "local", &sp, m)
		if err != nil {
			t.Fatal(err)
		}
		what := fmt.Sprintf("bravo %d", n)
		if sp.Clusters[0].Slots != k {
			t.Fatalf("%s: %d local entries, want %d", what, sp.Clusters[0].Slots, k)
		}
		addrs := entryAddrs(backends, table)
		realised(t, what, v, sp, addrs)
		evenWithin(t, what, v, addrs, 0.15, "local", "bravo")
		return addrs
	}
	bravo := many("bravo", "10.2", 21, StateActive)
	isBravo := map[netip.AddrPort]bool{}
	var addrs []netip.AddrPort
	for _, b := range bravo {
		isBravo[b.Addr] = true
		addrs = append(addrs, b.Addr)
	}
	// The entries bravo received: its entries of the graded table that
	// the remote level's plain table gives the hostile cluster.
	var remote []netip.AddrPort
	for _, b := range append(slices.Clone(bravo[:20]), hostile...) {
		remote = append(remote, b.Addr)
	}
	plainRemote, err := MaglevTable(remote, m)
	if err != nil {
		t.Fatal(err)
	}
	t20, t21 := compose(20), compose(21)
	held, received, both, moved := 0, 0, 0, 0
	for i := range t20 {
		if isBravo[t20[i]] {
			held++
			if !isBravo[remote[plainRemote[i]]] {
				received++
			}
		}
		if isBravo[t20[i]] && isBravo[t21[i]] {
			both++
			if t20[i] != t21[i] {
				moved++
			}
		}
	}
	if received < held/5 {
		t.Fatalf("bravo received %d of its %d entries: the attack did not work", received, held)
	}
	p20, err := MaglevTable(addrs[:20], m)
	if err != nil {
		t.Fatal(err)
	}
	p21, err := MaglevTable(addrs, m)
	if err != nil {
		t.Fatal(err)
	}
	plain := differ(entryAddrs(addrs[:20], p20), entryAddrs(addrs, p21))
	got, want := float64(moved)/float64(both), float64(plain)/m
	t.Logf("bravo received %d of its %d entries; one pod more moved %d of the %d it kept (%.3f), Maglev alone %.3f", received, held, moved, both, got, want)
	if got > want+0.02 {
		t.Errorf("one pod more in bravo moved %.1f%% of its entries, Maglev alone %.1f%%", 100*got, 100*want)
	}
}

// The tables depend on the backends, not on the order they are listed
// in: the same views shuffled, unsorted, give the same Maglev table
// (entry by entry, as addresses), here with a cluster receiving entries
// from a hostile one (balance), and the same slots per backend.
func TestGradedTablesIgnoreListingOrder(t *testing.T) {
	const m = maglev.DefaultSize
	local := append(many("local", "10.1", 3, StateActive), many("local", "10.9", 7, StateTerminating)...)
	v := join(local, many("bravo", "10.2", 20, StateActive), many("aaa", "10.4", 7, StateActive), grounds(t, m, 6880, m-300, 2, 10))
	w := slices.Clone(v)
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(w), func(i, j int) { w[i], w[j] = w[j], w[i] })
	maglevOf := func(v []BackendView) []netip.AddrPort {
		sp := GradedSplit(v, "local")
		backends, table, err := ComposeMaglev(v, "local", &sp, m)
		if err != nil {
			t.Fatal(err)
		}
		return entryAddrs(backends, table)
	}
	if diff := differ(maglevOf(v), maglevOf(w)); diff != 0 {
		t.Errorf("the Maglev table depends on the order the backends were listed in: %d of %d entries differ", diff, m)
	}
	slotsOf := func(v []BackendView) map[netip.AddrPort]int {
		sp := GradedSplit(v, "local")
		return perBackend(ComposeSlots(v, "local", &sp))
	}
	a, b := slotsOf(v), slotsOf(w)
	for addr, n := range a {
		if b[addr] != n {
			t.Errorf("random: %s holds %d slots, %d with the views shuffled", addr, n, b[addr])
		}
	}
}

// manyClusters is local 3 of 10 healthy beside n remote clusters of 3
// active backends each (the remote entries balance hands about half of
// them).
func manyClusters(n int) []BackendView {
	groups := [][]BackendView{many("local", "10.1", 3, StateActive), many("local", "10.9", 7, StateTerminating)}
	for c := range n {
		groups = append(groups, many(fmt.Sprintf("r%03d", c), fmt.Sprintf("11.%d", c), 3, StateActive))
	}
	return join(groups...)
}

// A graded Maglev frontend beside 255 remote clusters of 3 backends
// allocates a bounded few tables of m entries per apply, not one per
// cluster receiving entries: until a review found it balance built each
// of those a table of m entries, 8 MB (122 tables) at the default size,
// 28 ms where the frontend's own tables took 1.7 ms. Now at most 16
// tables' worth (1 MiB).
func TestGradedMaglevManyClustersBoundedGarbage(t *testing.T) {
	const m = maglev.DefaultSize
	v := manyClusters(255)
	compose := func() {
		sp := GradedSplit(v, "local")
		if _, _, err := ComposeMaglev(v, "local", &sp, m); err != nil {
			t.Fatal(err)
		}
	}
	compose()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	const runs = 4
	for range runs {
		compose()
	}
	runtime.ReadMemStats(&after)
	per := (after.TotalAlloc - before.TotalAlloc) / runs
	t.Logf("%d bytes allocated per composition (%.1f tables of %d entries)", per, float64(per)/(4*m), m)
	if per > 16*4*m {
		t.Errorf("%d bytes allocated per composition, %.1f tables of %d entries; want at most 16", per, float64(per)/(4*m), m)
	}
}

// BenchmarkComposeMaglevManyClusters is what a graded Maglev frontend
// costs on every apply (NodeAlive applies every local service again)
// beside 255 remote clusters of 3 backends, at the default table size
// and the largest: balance builds a table for each cluster receiving
// entries (docs/benchmarks.md).
func BenchmarkComposeMaglevManyClusters(b *testing.B) {
	v := manyClusters(255)
	for _, m := range []uint32{maglev.DefaultSize, 131071} {
		b.Run(fmt.Sprintf("m=%d", m), func(b *testing.B) {
			for b.Loop() {
				sp := GradedSplit(v, "local")
				if _, _, err := ComposeMaglev(v, "local", &sp, m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// The remote level's health is its best cluster's, and its clusters
// share its load by their usable backends, whatever their own health: a
// cluster's share does not depend on its health. Beside local 3 of 10
// healthy and edge 1 of 1, bravo with 1 usable of 1,000 takes 29% of new
// connections on its one pod, as edge does (documented in the rule).
func TestGradedRemoteShareIgnoresClusterHealth(t *testing.T) {
	local := append(many("local", "10.1", 3, StateActive), many("local", "10.9", 7, StateTerminating)...)
	bravo := append(many("bravo", "10.2", 1, StateActive), many("bravo", "10.3", 999, StateTerminating)...)
	sp := GradedSplit(join(local, many("edge", "10.4", 1, StateActive), bravo), "local")
	if got := shares(sp); got != "local 3/10 420000, bravo 1/1000 290000, edge 1/1 290000" {
		t.Errorf("split %s", got)
	}
}
