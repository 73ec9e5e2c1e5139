package service

import (
	"fmt"
	"net/netip"
	"testing"
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
// now each cluster's own, weighted by its healthy backends: a cluster
// without a usable backend adds nothing.
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

// The remote level's health is Σ healthy_c × health_c / Σ healthy_c over
// the remote clusters c, health_c = min(1, 1.4 × healthy_c/total_c).
func TestGradedRemoteHealthWeightedByHealthyBackends(t *testing.T) {
	tests := []struct {
		name   string
		views  []BackendView
		health float64
		want   string
	}{
		// (1 × 466666 + 2 × 1000000) / 3 = 822222.
		{"two remotes", views("c1:3/10", "c2:1/3", "c3:2/2"), 0.822222, "c1 3/10 420000, c2 1/3 193333, c3 2/2 386667"},
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
