package maglev

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// names returns n distinct backend names of the form "10.0.x.y:8080".
func names(n int) []string {
	s := make([]string, n)
	for i := range s {
		s[i] = fmt.Sprintf("10.0.%d.%d:8080", i/250, i%250+1)
	}
	return s
}

func mustBuild(t testing.TB, backends []string, m uint32) []int32 {
	t.Helper()
	table, err := Build(backends, m)
	if err != nil {
		t.Fatalf("Build(%d backends, %d): %v", len(backends), m, err)
	}
	if len(table) != int(m) {
		t.Fatalf("Build: got %d slots, want %d", len(table), m)
	}
	for i, b := range table {
		if b < 0 || int(b) >= len(backends) {
			t.Fatalf("slot %d holds %d, not an index into %d backends", i, b, len(backends))
		}
	}
	return table
}

func TestValidSize(t *testing.T) {
	for _, m := range []uint32{251, 257, DefaultSize, 65521, 65537, 131071} {
		if err := ValidSize(m); err != nil {
			t.Errorf("ValidSize(%d) = %v, want nil", m, err)
		}
	}
	for _, tc := range []struct {
		m   uint32
		why string
	}{
		{0, "out of range"},
		{2, "out of range"},
		{241, "out of range"}, // prime, too small
		{250, "out of range"},
		{252, "not prime"},
		{16384, "not prime"},
		{65535, "not prime"},
		{131072, "out of range"},
		{262139, "out of range"}, // prime, too large
	} {
		err := ValidSize(tc.m)
		if !errors.Is(err, ErrSize) {
			t.Errorf("ValidSize(%d) = %v, want an error wrapping ErrSize", tc.m, err)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, strconv.FormatUint(uint64(tc.m), 10)) || !strings.Contains(msg, tc.why) {
			t.Errorf("ValidSize(%d) = %q, want the value and %q in the message", tc.m, msg, tc.why)
		}
	}
	if _, err := Build(names(3), 1000); !errors.Is(err, ErrSize) {
		t.Errorf("Build with m=1000: err = %v, want ErrSize", err)
	}
}

func TestBuildErrors(t *testing.T) {
	for _, backends := range [][]string{nil, {}} {
		if _, err := Build(backends, DefaultSize); !errors.Is(err, ErrNoBackends) {
			t.Errorf("Build(%q) err = %v, want ErrNoBackends", backends, err)
		}
	}
	_, err := Build([]string{"10.0.0.1:80", "10.0.0.2:80", "10.0.0.1:80"}, DefaultSize)
	if err == nil || !strings.Contains(err.Error(), `"10.0.0.1:80"`) {
		t.Errorf("Build with duplicate: err = %v, want an error naming 10.0.0.1:80", err)
	}
}

func TestBuildOneBackend(t *testing.T) {
	for i, b := range mustBuild(t, []string{"10.0.0.1:80"}, 251) {
		if b != 0 {
			t.Fatalf("slot %d = %d, want 0", i, b)
		}
	}
}

// TestBuildGolden pins the output so that a change of hash or of the fill
// order, which would make nodes running different versions disagree, is
// noticed.
func TestBuildGolden(t *testing.T) {
	table := mustBuild(t, []string{"10.0.1.5:8080", "10.0.1.6:8080", "10.0.1.7:8080"}, 251)
	want := []int32{0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 2, 2, 1}
	if !slices.Equal(table[:len(want)], want) {
		t.Errorf("first slots = %v, want %v", table[:len(want)], want)
	}
}

func TestBuildDeterministicOrderIndependent(t *testing.T) {
	backends := names(100)
	want := mustBuild(t, backends, DefaultSize)
	if again := mustBuild(t, backends, DefaultSize); !slices.Equal(again, want) {
		t.Fatal("two builds of the same input differ")
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 5 {
		shuffled := slices.Clone(backends)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		got := mustBuild(t, shuffled, DefaultSize)
		for i := range got {
			if shuffled[got[i]] != backends[want[i]] {
				t.Fatalf("slot %d: %s with shuffled input, %s with original", i, shuffled[got[i]], backends[want[i]])
			}
		}
	}
}

// TestBalance checks the guarantee of the round-robin fill: while the table
// has room every backend claims one slot per round, so each gets
// floor(m/n) or ceil(m/n) slots, and exactly m%n get the larger count.
func TestBalance(t *testing.T) {
	for _, tc := range []struct {
		n int
		m uint32
	}{{100, DefaultSize}, {3, 251}, {1000, 65521}, {7, 131071}} {
		table := mustBuild(t, names(tc.n), tc.m)
		count := make([]int, tc.n)
		for _, b := range table {
			count[b]++
		}
		lo, hi := int(tc.m)/tc.n, (int(tc.m)+tc.n-1)/tc.n
		big := 0
		for i, c := range count {
			if c != lo && c != hi {
				t.Errorf("n=%d m=%d: backend %d has %d slots, want %d or %d", tc.n, tc.m, i, c, lo, hi)
			}
			if c == hi {
				big++
			}
		}
		if lo != hi && big != int(tc.m)%tc.n {
			t.Errorf("n=%d m=%d: %d backends have %d slots, want %d", tc.n, tc.m, big, hi, int(tc.m)%tc.n)
		}
	}
}

// TestMoreBackendsThanSlots checks that the table is still full and valid
// when some backends cannot get a slot.
func TestMoreBackendsThanSlots(t *testing.T) {
	table := mustBuild(t, names(300), 251)
	seen := map[int32]bool{}
	for _, b := range table {
		if seen[b] {
			t.Fatalf("backend %d has two slots with 300 backends and 251 slots", b)
		}
		seen[b] = true
	}
}

// moves measures a change from (oldNames, oldTable) to (newNames, newTable):
// total is Disruption, and between is the fraction of slots that moved from
// one backend present in both lists to another one (churn among survivors,
// beyond what removing or adding a backend strictly requires).
func moves(oldNames []string, oldTable []int32, newNames []string, newTable []int32) (total, between float64) {
	inOld := map[string]bool{}
	for _, s := range oldNames {
		inOld[s] = true
	}
	inNew := map[string]bool{}
	for _, s := range newNames {
		inNew[s] = true
	}
	n := 0
	for i := range oldTable {
		o, w := oldNames[oldTable[i]], newNames[newTable[i]]
		if o != w && inNew[o] && inOld[w] {
			n++
		}
	}
	return Disruption(oldNames, oldTable, newNames, newTable), float64(n) / float64(len(oldTable))
}

// TestMinimalDisruption removes or adds one backend and bounds the fraction
// of slots that change owner.
//
// Removing a backend must move its own ~1/N share; adding one must give the
// newcomer ~1/(N+1). Maglev does not guarantee strictly minimal disruption:
// the survivors' fill order shifts, so some slots also move from one
// survivor to another ("churn"). Measured by this test (m=65521, every
// N/50-th backend removed, 20 different backends added; max over the runs):
//
//	N     removal: total  churn     addition: total  churn
//	10             10.29%  0.29%               9.44%  0.35%
//	100             1.61%  0.61%               1.59%  0.60%
//	1000            0.73%  0.63%               0.71%  0.61%
//
// total*N is 1.03, 1.61 and 7.26: a "1.6/N" rule does not hold for large N,
// because churn stays around 0.6% of the table for this m whatever N (the
// same was measured with SHA-256 instead of FNV-1a, so it is the algorithm,
// not the hash). With m=16381 churn reached 1.5% at N=100, hence bigger
// tables for big backend sets. The test asserts churn < 1% and total <=
// ceil(m/N)/m + 1%, i.e. ~1.6x headroom over the worst measured churn.
func TestMinimalDisruption(t *testing.T) {
	const m = 65521
	const churnBound = 0.01
	for _, n := range []int{10, 100, 1000} {
		all := names(n + 20)
		base := all[:n]
		baseTable := mustBuild(t, base, m)
		share := float64((m+n-1)/n) / m // largest share a backend can hold
		var worstTotal, worstChurn float64

		step := max(1, n/50)
		for r := 0; r < n; r += step {
			removed := slices.Delete(slices.Clone(base), r, r+1)
			total, churn := moves(base, baseTable, removed, mustBuild(t, removed, m))
			if churn >= churnBound || total > share+churnBound {
				t.Errorf("N=%d remove %s: %.4f of slots changed, %.4f between survivors", n, base[r], total, churn)
			}
			worstTotal, worstChurn = max(worstTotal, total), max(worstChurn, churn)
		}
		t.Logf("N=%d remove: max total %.4f (%.2f/N), max survivor churn %.4f", n, worstTotal, worstTotal*float64(n), worstChurn)

		worstTotal, worstChurn = 0, 0
		for _, extra := range all[n:] {
			added := append(slices.Clone(base), extra)
			total, churn := moves(base, baseTable, added, mustBuild(t, added, m))
			if churn >= churnBound || total > share+churnBound {
				t.Errorf("N=%d add %s: %.4f of slots changed, %.4f between survivors", n, extra, total, churn)
			}
			worstTotal, worstChurn = max(worstTotal, total), max(worstChurn, churn)
		}
		t.Logf("N=%d add: max total %.4f (%.2f/(N+1)), max survivor churn %.4f", n, worstTotal, worstTotal*float64(n+1), worstChurn)
	}
}

func TestDisruption(t *testing.T) {
	a := []string{"x", "y"}
	b := []string{"y", "x", "z"}
	// slots: x y x y  vs  x(1) y(0) z(2) y(0)
	if got := Disruption(a, []int32{0, 1, 0, 1}, b, []int32{1, 0, 2, 0}); got != 0.25 {
		t.Errorf("Disruption = %v, want 0.25", got)
	}
	if got := Disruption(a, []int32{0}, a, []int32{0, 1}); got != 1 {
		t.Errorf("Disruption of different sizes = %v, want 1", got)
	}
}

var sink []int32

func BenchmarkBuild1000Backends(b *testing.B) {
	backends := names(1000)
	for _, m := range []uint32{DefaultSize, 65521} {
		b.Run(fmt.Sprintf("m=%d", m), func(b *testing.B) {
			for b.Loop() {
				table, err := Build(backends, m)
				if err != nil {
					b.Fatal(err)
				}
				sink = table
			}
			b.ReportMetric(b.Elapsed().Seconds()*1e3/float64(b.N), "ms/build")
		})
	}
}

// BenchmarkBuild1000BackendsBaseline fills a table of the same size
// round-robin (slot i -> i % n): the trivial lower bound for Build.
func BenchmarkBuild1000BackendsBaseline(b *testing.B) {
	const n = 1000
	for _, m := range []uint32{DefaultSize, 65521} {
		b.Run(fmt.Sprintf("m=%d", m), func(b *testing.B) {
			for b.Loop() {
				table := make([]int32, m)
				for i := range table {
					table[i] = int32(i % n)
				}
				sink = table
			}
			b.ReportMetric(b.Elapsed().Seconds()*1e3/float64(b.N), "ms/build")
		})
	}
}

func TestSizeAtLeast(t *testing.T) {
	for _, tc := range []struct{ n, want uint32 }{
		{0, 251}, {251, 251}, {252, 257}, {400, 401}, {3200, 3203}, {16381, 16381}, {16382, 16411}, {131071, 131071}, {1 << 20, 131071},
	} {
		got := SizeAtLeast(tc.n)
		if got != tc.want || ValidSize(got) != nil {
			t.Errorf("SizeAtLeast(%d) = %d, want %d", tc.n, got, tc.want)
		}
	}
}
