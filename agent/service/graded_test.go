package service

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/filament-net/filament/agent/datapath"
	"github.com/filament-net/filament/agent/service/maglev"
)

func TestLevelHealth(t *testing.T) {
	tests := []struct {
		l    Level
		want uint32
	}{
		{Level{10, 10}, PPM},
		{Level{8, 10}, PPM}, // 1.12 capped
		{Level{5, 7}, PPM},  // exactly 1
		{Level{7, 10}, 980_000},
		{Level{5, 10}, 700_000},
		{Level{3, 10}, 420_000},
		{Level{1, 3}, 466_666}, // 0.4666…, rounded down
		{Level{0, 10}, 0},
		{Level{0, 0}, 0},
		{Level{3, 0}, 0},                   // no total: nothing to grade
		{Level{12, 10}, PPM},               // more healthy than total: capped at total
		{Level{-1, 10}, 0},                 // nonsense counts give nothing
		{Level{1 << 40, 1 << 41}, 700_000}, // large counts do not overflow
	}
	for _, tc := range tests {
		if got := LevelHealth(tc.l); got != tc.want {
			t.Errorf("LevelHealth(%+v) = %d, want %d", tc.l, got, tc.want)
		}
	}
}

// TestPriorityLoad is the table and Envoy's documented examples
// (its doc rounds to whole percents; here it is parts per million).
func TestPriorityLoad(t *testing.T) {
	tests := []struct {
		name   string
		levels []Level
		want   []uint32
	}{
		{"10 of 10 healthy: all local", []Level{{10, 10}, {4, 4}}, []uint32{PPM, 0}},
		{"8 of 10: still all local", []Level{{8, 10}, {4, 4}}, []uint32{PPM, 0}},
		{"7 of 10: 98% local", []Level{{7, 10}, {4, 4}}, []uint32{980_000, 20_000}},
		{"5 of 10: 70% local", []Level{{5, 10}, {4, 4}}, []uint32{700_000, 300_000}},
		{"3 of 10: 42% local", []Level{{3, 10}, {4, 4}}, []uint32{420_000, 580_000}},
		{"1 of 10: 14% local", []Level{{1, 10}, {2, 2}}, []uint32{140_000, 860_000}},
		{"0 of 10: all remote", []Level{{0, 10}, {4, 4}}, []uint32{0, PPM}},
		{"no local backends: all remote", []Level{{0, 0}, {4, 4}}, []uint32{0, PPM}},
		{"no remotes: all local of what is healthy", []Level{{3, 10}, {0, 0}}, []uint32{PPM, 0}},
		{"remotes all down: all local", []Level{{1, 10}, {0, 6}}, []uint32{PPM, 0}},
		{"nothing healthy anywhere", []Level{{0, 10}, {0, 4}}, []uint32{0, 0}},
		{"nothing at all", []Level{{0, 0}, {0, 0}}, []uint32{0, 0}},
		{"both half healthy: 70/30", []Level{{5, 10}, {5, 10}}, []uint32{700_000, 300_000}},
		{"25% and 100%: 35/65", []Level{{1, 4}, {4, 4}}, []uint32{350_000, 650_000}},
		// Total health 70% < 100%: normalised, 35/70 each.
		{"25% and 25%: normalised to 50/50", []Level{{1, 4}, {1, 4}}, []uint32{500_000, 500_000}},
		{"3 of 10 local, remote 2 of 10: normalised", []Level{{3, 10}, {2, 10}}, []uint32{600_000, 400_000}},
		// Three levels (Envoy's example 25/25/20 healthy: 35,35,28 of 98);
		// what rounding down leaves goes to the first level.
		{"three levels normalised", []Level{{1, 4}, {1, 4}, {1, 5}}, []uint32{357_144, 357_142, 285_714}},
		{"three levels, third takes the rest", []Level{{1, 4}, {1, 4}, {5, 5}}, []uint32{350_000, 350_000, 300_000}},
		{"one level", []Level{{1, 10}}, []uint32{PPM}},
		{"no levels", nil, []uint32{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := PriorityLoad(tc.levels)
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("PriorityLoad(%v) = %v, want %v", tc.levels, got, tc.want)
			}
		})
	}
}

// views builds backends of clusters: spec is "cluster:healthy/total"
// (healthy ones active, the rest terminating), addresses 10.<i>.0.<j>.
func views(spec ...string) []BackendView {
	var out []BackendView
	for i, s := range spec {
		var c string
		var h, n int
		if _, err := fmt.Sscanf(strings.Replace(s, ":", " ", 1), "%s %d/%d", &c, &h, &n); err != nil {
			panic(s)
		}
		for j := range n {
			v := BackendView{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i + 1), 0, byte(j + 1)}), 8080),
				Cluster: c, State: StateActive, Healthy: true}
			if j >= h {
				v.State = StateTerminating
			}
			out = append(out, v)
		}
	}
	sortBackends(out)
	return out
}

func shares(sp Split) string {
	var s []string
	for _, c := range sp.Clusters {
		s = append(s, fmt.Sprintf("%s %d/%d %d", c.Cluster, c.Healthy, c.Total, c.ppm))
	}
	return strings.Join(s, ", ")
}

func TestGradedSplit(t *testing.T) {
	tests := []struct {
		name  string
		views []BackendView
		want  string
	}{
		{"all healthy", views("c1:10/10", "c2:4/4"), "c1 10/10 1000000, c2 4/4 0"},
		{"3 of 10", views("c1:3/10", "c2:4/4"), "c1 3/10 420000, c2 4/4 580000"},
		// Remote clusters share the remote level by healthy backends:
		// 580000 × 1/3 and × 2/3, the remainder unit to the larger one.
		{"two remotes by healthy backends", views("c1:3/10", "c2:1/3", "c3:2/2"), "c1 3/10 420000, c2 1/3 193333, c3 2/2 386667"},
		// The remote level's health is its best cluster's: c2 14%, c3
		// 70%, so 70%; with the local 14% the total is 84%, normalised.
		{"remote level health by cluster", views("c1:1/10", "c2:1/10", "c3:1/2"), "c1 1/10 166667, c2 1/10 416667, c3 1/2 416666"},
		{"local cluster sorts after a remote", views("b1:0/2", "c1:5/10"), "c1 5/10 1000000, b1 0/2 0"},
		{"no local backends", views("c2:2/2"), "c1 0/0 0, c2 2/2 1000000"},
		{"nothing healthy", views("c1:0/3", "c2:0/2"), "c1 0/3 0, c2 0/2 0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sp := GradedSplit(tc.views, "c1")
			if got := shares(sp); got != tc.want {
				t.Fatalf("split %s, want %s", got, tc.want)
			}
			var sum float64
			for _, c := range sp.Clusters {
				sum += c.Share
			}
			if sum != 0 && (sum < 0.999999 || sum > 1.000001) {
				t.Fatalf("shares add up to %v", sum)
			}
		})
	}
	// A node going down makes its backends unhealthy but keeps them in
	// the total.
	v := views("c1:10/10", "c2:4/4")
	for i := range 7 {
		v[i].Healthy = false
	}
	if got := shares(GradedSplit(v, "c1")); got != "c1 3/10 420000, c2 4/4 580000" {
		t.Fatalf("dead node: %s", got)
	}
}

// perBackend counts slots per address.
func perBackend(slots []netip.AddrPort) map[netip.AddrPort]int {
	out := map[netip.AddrPort]int{}
	for _, b := range slots {
		out[b]++
	}
	return out
}

func TestComposeSlots(t *testing.T) {
	// 3 of 10 local healthy, c2 2 of 2: 420 and 580 of 1000 slots, 140
	// per local backend, 290 per remote one; none for terminating ones.
	v := views("c1:3/10", "c2:2/2")
	sp := GradedSplit(v, "c1")
	slots := ComposeSlots(v, "c1", &sp)
	if len(slots) != GradedSlots || sp.Slots != GradedSlots {
		t.Fatalf("%d slots (split says %d), want %d", len(slots), sp.Slots, GradedSlots)
	}
	if sp.Clusters[0].Slots != 420 || sp.Clusters[1].Slots != 580 {
		t.Fatalf("cluster slots %+v", sp.Clusters)
	}
	per := perBackend(slots)
	for _, b := range v {
		want := 0
		if usable(b) {
			want = map[string]int{"c1": 140, "c2": 290}[b.Cluster]
		}
		if per[b.Addr] != want {
			t.Errorf("%s %s has %d slots, want %d", b.Cluster, b.Addr, per[b.Addr], want)
		}
	}

	// Uneven: 1 of 3 local (46.6666%), 3 remote: 467 local slots over
	// one backend, 533 over three (177, 178, 178: the extra slots to the
	// first by a hash of the address).
	v = views("c1:1/3", "c2:3/3")
	sp = GradedSplit(v, "c1")
	per = perBackend(ComposeSlots(v, "c1", &sp))
	if sp.Clusters[0].Slots != 467 || per[v[0].Addr] != 467 {
		t.Fatalf("local slots %d (%v)", sp.Clusters[0].Slots, per)
	}
	var remote []int
	for _, b := range v[3:] {
		remote = append(remote, per[b.Addr])
	}
	if !reflect.DeepEqual(remote, []int{177, 178, 178}) {
		t.Fatalf("remote slots %v", remote)
	}

	// One level takes all: its backends once each, as a plain service.
	v = views("c1:8/10", "c2:2/2")
	sp = GradedSplit(v, "c1")
	slots = ComposeSlots(v, "c1", &sp)
	if len(slots) != 8 || sp.Clusters[0].Slots != 8 || sp.Clusters[1].Slots != 0 {
		t.Fatalf("all local: %d slots, %+v", len(slots), sp.Clusters)
	}
	v = views("c1:0/10", "c2:2/2")
	sp = GradedSplit(v, "c1")
	if slots = ComposeSlots(v, "c1", &sp); len(slots) != 2 || slots[0].Addr() != v[10].Addr.Addr() {
		t.Fatalf("all remote: %v", slots)
	}
	v = views("c1:0/10", "c2:0/2")
	sp = GradedSplit(v, "c1")
	if slots = ComposeSlots(v, "c1", &sp); len(slots) != 0 || sp.Slots != 0 {
		t.Fatalf("nothing usable: %v", slots)
	}
}

func TestComposeMaglev(t *testing.T) {
	const m = maglev.DefaultSize
	v := views("c1:3/10", "c2:2/2")
	sp := GradedSplit(v, "c1")
	backends, table, err := ComposeMaglev(v, "c1", &sp, m)
	if err != nil {
		t.Fatal(err)
	}
	if len(backends) != 5 || len(table) != m {
		t.Fatalf("%d backends, %d entries", len(backends), len(table))
	}
	// round(0.42 × 16381) = 6880 local entries, first; the rest remote.
	const k = 6880
	for i, x := range table {
		if local := x < 3; local != (i < k) {
			t.Fatalf("entry %d holds backend %d (%s)", i, x, backends[x])
		}
	}
	if sp.Slots != m || sp.Clusters[0].Slots != k || sp.Clusters[1].Slots != m-k {
		t.Fatalf("slots %d, clusters %+v", sp.Slots, sp.Clusters)
	}
	// Each local backend's part of the local entries is near a third
	// (Maglev spreads evenly over the whole table; a prefix of it is
	// close to even).
	per := map[int32]int{}
	for _, x := range table[:k] {
		per[x]++
	}
	for b, n := range per {
		if n < k/3-k/30 || n > k/3+k/30 {
			t.Errorf("local backend %d has %d of %d local entries", b, n, k)
		}
	}

	// The local share drops (3 of 12 known now: 35%): only entries that
	// change level move, the rest keep their backend.
	v2 := views("c1:3/12", "c2:2/2")
	sp2 := GradedSplit(v2, "c1")
	b2, t2, err := ComposeMaglev(v2, "c1", &sp2, m)
	if err != nil {
		t.Fatal(err)
	}
	moved := 0
	for i := range table {
		if backends[table[i]] != b2[t2[i]] {
			moved++
		}
	}
	if k2 := 5733; sp2.Clusters[0].Slots != k2 || moved != k-k2 { // round(0.35 × 16381)
		t.Fatalf("local entries %d, %d entries moved, want %d", sp2.Clusters[0].Slots, moved, k-k2)
	}

	// One level: exactly the plain Maglev table of its backends.
	v = views("c1:8/10", "c2:2/2")
	sp = GradedSplit(v, "c1")
	backends, table, err = ComposeMaglev(v, "c1", &sp, m)
	if err != nil {
		t.Fatal(err)
	}
	var first8 []netip.AddrPort
	for _, b := range v[:8] {
		first8 = append(first8, b.Addr)
	}
	plain, _ := MaglevTable(first8, m)
	if len(backends) != 8 || !reflect.DeepEqual(table, plain) {
		t.Fatalf("all local: %d backends, table differs from the plain one", len(backends))
	}
	v = views("c1:0/1", "c2:0/2")
	sp = GradedSplit(v, "c1")
	if backends, table, err = ComposeMaglev(v, "c1", &sp, m); backends != nil || table != nil || err != nil || sp.Slots != 0 {
		t.Fatalf("nothing usable: %v %d %v", backends, len(table), err)
	}
}

func TestApportion(t *testing.T) {
	tests := []struct {
		n    uint64
		w    []uint64
		want []uint64
	}{
		{1000, []uint64{420_000, 580_000}, []uint64{420, 580}},
		{10, []uint64{1, 1, 1}, []uint64{4, 3, 3}},
		{10, []uint64{0, 1, 1}, []uint64{0, 5, 5}},
		{10, []uint64{0, 0}, []uint64{0, 0}},
		{0, []uint64{1, 2}, []uint64{0, 0}},
		{5, []uint64{1, 2, 2}, []uint64{1, 2, 2}},
		{7, []uint64{1, 1}, []uint64{4, 3}},
	}
	for _, tc := range tests {
		if got := apportion(tc.n, tc.w); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("apportion(%d, %v) = %v, want %v", tc.n, tc.w, got, tc.want)
		}
	}
}

// annGraded: a global service with graded failover.
var annGraded = map[string]string{AnnotationGlobal: "true", AnnotationAffinity: "local", AnnotationFailover: "graded"}

// local3of10 is ten local backends 10.0.1.1-10 on node n1, the first
// three active and the rest terminating.
func local3of10() []Backend {
	var local []Backend
	for i := range 10 {
		state := ""
		if i >= 3 {
			state = StateTerminating
		}
		local = append(local, be(fmt.Sprintf("10.0.1.%d", i+1), "n1", state))
	}
	return local
}

func TestSelectGraded(t *testing.T) {
	graded := annGraded
	local := local3of10()
	ls := mkSvc(t, graded, httpPort, local...)
	rs := mkSvc(t, annGlobal, httpPort, be("10.1.1.1", "m1", ""), be("10.1.1.2", "m2", ""))
	fe := ls.Frontends(nil)[0]
	pref := func(v []BackendView) map[string]int {
		out := map[string]int{}
		for _, b := range v {
			if b.Preferred {
				out[b.Cluster]++
			}
		}
		return out
	}
	// 3 of 10: both levels take connections; terminating ones never.
	if got := pref(Select(ls, map[string]*Service{"c2": rs}, "c1", fe, nil)); !reflect.DeepEqual(got, map[string]int{"c1": 3, "c2": 2}) {
		t.Errorf("3 of 10: preferred %v", got)
	}
	// Cilium's affinity local with the same backends: local only.
	ll := mkSvc(t, annGlobalLocal, httpPort, local...)
	if got := pref(Select(ll, map[string]*Service{"c2": rs}, "c1", fe, nil)); !reflect.DeepEqual(got, map[string]int{"c1": 3}) {
		t.Errorf("affinity local: preferred %v", got)
	}
	// 8 of 10 healthy: the local level takes everything.
	for i := 3; i < 8; i++ {
		local[i].State = StateActive
	}
	ls = mkSvc(t, graded, httpPort, local...)
	if got := pref(Select(ls, map[string]*Service{"c2": rs}, "c1", fe, nil)); !reflect.DeepEqual(got, map[string]int{"c1": 8}) {
		t.Errorf("8 of 10: preferred %v", got)
	}
	// Every local node down: the remote level takes everything.
	if got := pref(Select(ls, map[string]*Service{"c2": rs}, "c1", fe, deadNodes("c1/n1"))); !reflect.DeepEqual(got, map[string]int{"c2": 2}) {
		t.Errorf("local node down: preferred %v", got)
	}
}

const gradedYAML = `
metadata:
  name: web
  annotations: {service.cilium.io/global: "true", service.cilium.io/affinity: local, service.filament.io/failover: graded}
spec:
  clusterIP: 10.96.0.10
  loadBalancerAlgorithm: ALG
  ports:
  - {name: http, port: 80, targetPort: 8080}
backends:
- {ip: 10.0.1.1, node: n1}
- {ip: 10.0.1.2, node: n1, state: maintenance}
`

func TestManagerGraded(t *testing.T) {
	for _, alg := range []string{"random", "maglev"} {
		t.Run(alg, func(t *testing.T) {
			m, dp := newManager(t, "")
			upsert(t, m, strings.Replace(gradedYAML, "ALG", alg, 1))
			// 1 of 2 local: health 70%, 30% to c2's one healthy backend.
			m.RemoteChanged("c2", remoteSvc(t, `service.cilium.io/global: "true"`), false)
			st, err := m.Get("default", "web")
			if err != nil {
				t.Fatal(err)
			}
			if st.Options.Failover != FailoverGraded {
				t.Fatalf("options %+v", st.Options)
			}
			sp := st.Frontends[0].Split
			if sp == nil {
				t.Fatal("no split in the status")
			}
			if got := shares(*sp); got != "c1 1/2 700000, c2 1/2 300000" {
				t.Fatalf("split %s", got)
			}
			lbs, _ := dp.snapshot()
			fe := st.Frontends[0]
			s := lbs[datapath.Frontend{IP: fe.IP, Port: fe.Port, Proto: unix.IPPROTO_TCP}]
			slots := GradedSlots
			if alg == "maglev" {
				slots = fakeMaglevSize
				if len(s.Backends) != 2 || len(s.Maglev) != fakeMaglevSize {
					t.Fatalf("maglev: %d backends, %d entries", len(s.Backends), len(s.Maglev))
				}
			} else if len(s.Backends) != GradedSlots {
				t.Fatalf("random: %d slots, want %d", len(s.Backends), GradedSlots)
			}
			// round(0.7 × 251) = 176 local Maglev entries; 700 of 1000 slots.
			wantLocal := map[string]int{"random": 700, "maglev": 176}[alg]
			if sp.Slots != slots || sp.Clusters[0].Slots != wantLocal || sp.Clusters[1].Slots != slots-wantLocal {
				t.Fatalf("table slots %d, clusters %+v", sp.Slots, sp.Clusters)
			}
			// A bad failover value changes nothing.
			bad := mustParse(t, strings.Replace(gradedYAML, "ALG", alg, 1))
			bad.Metadata.Annotations[AnnotationFailover] = "gradual"
			if err := m.Upsert(context.Background(), bad); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), AnnotationFailover) {
				t.Fatalf("bad failover: %v", err)
			}
			if st2, _ := m.Get("default", "web"); !reflect.DeepEqual(st2, st) {
				t.Fatalf("a rejected upsert changed the status")
			}
			if lbs2, _ := dp.snapshot(); !reflect.DeepEqual(lbs2, lbs) {
				t.Fatalf("a rejected upsert changed the datapath")
			}
			// The local backend's node dies: all to c2, its backend once.
			m.NodeAlive("c1", "n1", false)
			want(t, dp, "10.96.0.10:80/tcp [10.2.1.1:9090]"+map[string]string{"random": "", "maglev": " maglev"}[alg])
		})
	}
}

// FuzzGraded feeds arbitrary backend counts, states and ports (as a
// hostile remote cluster's kvstore could) to the split and the table composition:
// loads add up to 100% or are all 0, the local level keeps
// min(1, 1.4 × healthy/total) whenever the remote level can take the rest,
// and the composed tables give each cluster its share to within one slot
// or Maglev entry, only to usable backends (random: each a slot below the
// table's bound), never panicking.
func FuzzGraded(f *testing.F) {
	f.Add(uint8(3), uint8(10), uint8(2), uint8(2), uint8(0), uint8(1), uint16(0), uint16(0))
	f.Add(uint8(0), uint8(0), uint8(0), uint8(0), uint8(0), uint8(0), uint16(0xffff), uint16(1))
	f.Add(uint8(1), uint8(3), uint8(1), uint8(3), uint8(2), uint8(2), uint16(0x5555), uint16(80))
	f.Fuzz(func(t *testing.T, lh, lt, ah, at, bh, bt uint8, dead, port uint16) {
		spec := []string{fmt.Sprintf("c1:%d/%d", min(lh, lt)%40, lt%40), fmt.Sprintf("a2:%d/%d", min(ah, at)%40, at%40),
			fmt.Sprintf("c3:%d/%d", min(bh, bt)%40, bt%40)}
		v := views(spec...)
		for i := range v {
			if dead&(1<<(i%16)) != 0 && i%3 == 0 {
				v[i].Healthy = false
			}
			// a2 chooses its backends' port, so its Maglev preference
			// lists.
			if v[i].Cluster == "a2" && port != 0 {
				v[i].Addr = netip.AddrPortFrom(v[i].Addr.Addr(), port)
			}
		}
		sp := GradedSplit(v, "c1")
		var sum uint64
		var usableN int
		for _, c := range sp.Clusters {
			sum += uint64(c.ppm)
			usableN += c.Healthy
		}
		if (usableN == 0) != (sum == 0) || (sum != 0 && sum != PPM) {
			t.Fatalf("loads add up to %d with %d usable: %s", sum, usableN, shares(sp))
		}
		local := sp.Clusters[0]
		health := LevelHealth(Level{local.Healthy, local.Total})
		if rh := sp.RemoteHealth * PPM; float64(health)+rh >= PPM && local.ppm != health {
			t.Fatalf("local load %d, want its health %d: %s", local.ppm, health, shares(sp))
		}
		slots := ComposeSlots(v, "c1", &sp)
		// Each cluster's slots, counted in the table, are within one of
		// its quota, only usable backends have any, and the split's counts
		// are the table's.
		check := func(what string, table []netip.AddrPort) {
			if usableN == 0 && (sp.Slots != 0 || len(table) != 0) {
				t.Fatalf("%s: %d slots with nothing usable", what, len(table))
			}
			if bad := tableShares(v, sp, table); len(bad) > 0 {
				t.Fatalf("%s: %s (%s)", what, strings.Join(bad, "; "), shares(sp))
			}
		}
		check("random", slots)
		// Below its bound the table gives every usable backend of a
		// cluster with a share a slot.
		if uint64(len(slots)) < gradedBound(v, "c1") {
			per, share := perBackend(slots), map[string]bool{}
			for _, c := range sp.Clusters {
				share[c.Cluster] = c.ppm > 0
			}
			for _, b := range v {
				if usable(b) && share[b.Cluster] && per[b.Addr] == 0 {
					t.Fatalf("%s %s has no slot of %d (%s)", b.Cluster, b.Addr, len(slots), shares(sp))
				}
			}
		}
		backends, table, err := ComposeMaglev(v, "c1", &sp, 251)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range table {
			if x < 0 || int(x) >= len(backends) {
				t.Fatalf("maglev entry %d of %d backends", x, len(backends))
			}
		}
		check("maglev", entryAddrs(backends, table))
	})
}

// BenchmarkTable compares, in one run, what the agent spends building a
// frontend's selection table on a change: the plain table of a service
// (every usable backend: affinity none) against the graded composition
// (split plus composed table) of the same backends, 3 of 10 local usable
// and 10 remote, for random slots and for a Maglev table of the default
// size.
func BenchmarkTable(b *testing.B) {
	v := views("c1:3/10", "c2:10/10")
	for i := range v {
		v[i].Preferred = usable(v[i])
	}
	b.Run("random/plain", func(b *testing.B) {
		for b.Loop() {
			_ = Preferred(v)
		}
	})
	b.Run("random/graded", func(b *testing.B) {
		for b.Loop() {
			sp := GradedSplit(v, "c1")
			_ = ComposeSlots(v, "c1", &sp)
		}
	})
	b.Run("maglev/plain", func(b *testing.B) {
		for b.Loop() {
			if _, err := MaglevTable(Preferred(v), maglev.DefaultSize); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("maglev/graded", func(b *testing.B) {
		for b.Loop() {
			sp := GradedSplit(v, "c1")
			if _, _, err := ComposeMaglev(v, "c1", &sp, maglev.DefaultSize); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// The status marks preferred exactly the backends that hold a slot or a
// Maglev entry of the frontend's datapath entry. Until a review found it
// every usable backend of a level with load was marked, also those past
// a capped random table (here 6,000 slots, bravo's 3,480 over its 5,000
// backends), past a Maglev table's entries (251 entries, 146 remote ones
// over 5,000) or of a cluster whose share rounds to no slot.
func TestManagerGradedPreferredHoldSlots(t *testing.T) {
	for _, alg := range []string{"random", "maglev"} {
		t.Run(alg, func(t *testing.T) {
			m, dp := newManager(t, "")
			local := mkSvc(t, annGraded, httpPort, local3of10()...)
			local.Metadata.Namespace = "default"
			local.Spec.LoadBalancerAlgorithm = alg
			if err := m.Upsert(context.Background(), local); err != nil {
				t.Fatal(err)
			}
			r := remoteSvcN(t, "10.2", 5000, "")
			r.Metadata.Namespace = "default"
			m.RemoteChanged("bravo", r, false)
			st, err := m.Get("default", "web")
			if err != nil {
				t.Fatal(err)
			}
			fst := st.Frontends[0]
			lbs, _ := dp.snapshot()
			s := lbs[datapath.Frontend{IP: fst.IP, Port: fst.Port, Proto: unix.IPPROTO_TCP}]
			held := map[netip.AddrPort]bool{}
			if s.Algorithm == datapath.AlgMaglev {
				for _, x := range s.Maglev {
					b := s.Backends[x]
					held[netip.AddrPortFrom(b.IP, b.Port)] = true
				}
			} else {
				for _, b := range s.Backends {
					held[netip.AddrPortFrom(b.IP, b.Port)] = true
				}
			}
			preferred := 0
			for _, v := range fst.Backends {
				if v.Preferred != held[v.Addr] {
					t.Fatalf("%s %s preferred %v, holds a slot %v", v.Cluster, v.Addr, v.Preferred, held[v.Addr])
				}
				if v.Preferred {
					preferred++
				}
			}
			if preferred != len(held) || preferred >= 5003 {
				t.Fatalf("%d preferred, %d hold a slot", preferred, len(held))
			}
		})
	}
}
