package identity

import (
	"testing"

	"github.com/filament-net/filament/agent/labels"
)

func TestLayout(t *testing.T) {
	id := Compose(7, 300)
	if uint32(id) != 7<<16|300 {
		t.Fatalf("compose: %d", id)
	}
	if id.ClusterID() != 7 || !id.InClusterRange(7) || id.InClusterRange(8) {
		t.Fatalf("cluster of %d: %d", id, id.ClusterID())
	}
	if Compose(7, 5).InClusterRange(7) {
		t.Fatal("local numbers below 256 must not be in a cluster's allocatable range")
	}
	if !World.IsReserved() || World.ClusterID() != 0 || World.InClusterRange(0) {
		t.Fatal("world must be reserved and in no cluster")
	}
	local := LocalScopeFlag | 12
	if !local.IsLocal() || local.IsReserved() || local.ClusterID() != 0 {
		t.Fatal("local-scope identity misclassified")
	}
	for _, bad := range []uint32{0, 256, 1000} {
		if ValidateClusterID(bad) == nil {
			t.Fatalf("cluster ID %d accepted", bad)
		}
	}
	if ValidateClusterID(255) != nil || ValidateClusterID(1) != nil {
		t.Fatal("valid cluster IDs rejected")
	}
}

func TestReservedLookup(t *testing.T) {
	ls, _ := labels.ParseList("reserved:world")
	if id, ok := LookupReserved(ls); !ok || id != World {
		t.Fatalf("reserved:world -> %v %v", id, ok)
	}
	ls, _ = labels.ParseList("k8s:app=web")
	if _, ok := LookupReserved(ls); ok {
		t.Fatal("k8s label looked up as reserved")
	}
	if len(Reserved()) != 6 {
		t.Fatalf("want 6 reserved identities, got %d", len(Reserved()))
	}
}

func TestLayout511(t *testing.T) {
	if err := SetMaxClusters(511); err != nil {
		t.Fatal(err)
	}
	defer SetMaxClusters(255)
	id := Compose(400, 300)
	if id.ClusterID() != 400 || !id.InClusterRange(400) || uint32(id) >= 1<<24 {
		t.Fatalf("511 layout: %d has cluster %d", id, id.ClusterID())
	}
	if Compose(400, 40000).InClusterRange(400) && Compose(400, 40000) == id {
		t.Fatal("local numbers above 32767 must not fit")
	}
	if ValidateClusterID(511) != nil || ValidateClusterID(512) == nil {
		t.Fatal("511 layout must accept 1-511 only")
	}
	if SetMaxClusters(300) == nil {
		t.Fatal("300 clusters accepted")
	}
	SetMaxClusters(255)
	if ValidateClusterID(256) == nil || Compose(7, 300).ClusterID() != 7 {
		t.Fatal("back to the 255 layout")
	}
}

// nextFree goes round each layout's range (65,280 numbers per cluster;
// 32,512 with 511 clusters) from the number after the cursor, never
// leaving the cluster's range, and hands out every number before one
// comes again.
func TestNextFreeGoesRound(t *testing.T) {
	t.Cleanup(func() { SetMaxClusters(255) })
	for _, layout := range []struct {
		clusters int
		cluster  uint32
		size     int
	}{{255, 255, 65280}, {511, 511, 32512}} {
		if err := SetMaxClusters(layout.clusters); err != nil {
			t.Fatal(err)
		}
		free := func(NumericIdentity) bool { return false }
		first := Compose(layout.cluster, LocalMin)
		last := Compose(layout.cluster, LocalMax)
		if got, _ := nextFree(layout.cluster, 0, free); got != first {
			t.Errorf("%d clusters: without a cursor got %d, want %d", layout.clusters, got, first)
		}
		if got, _ := nextFree(layout.cluster, last, free); got != first {
			t.Errorf("%d clusters: after the last number got %d, want the first %d", layout.clusters, got, first)
		}
		// Another cluster's number as cursor: from the start of this range.
		if got, _ := nextFree(layout.cluster, Compose(layout.cluster-1, 300), free); got != first {
			t.Errorf("%d clusters: after another cluster's number got %d", layout.clusters, got)
		}
		// Hand out the whole range, each number once, then the first again.
		used := map[NumericIdentity]bool{}
		cursor := Compose(layout.cluster, 1000)
		for i := 0; i < layout.size; i++ {
			n, ok := nextFree(layout.cluster, cursor, func(n NumericIdentity) bool { return used[n] })
			if !ok || used[n] || !n.InClusterRange(layout.cluster) {
				t.Fatalf("%d clusters: number %d of the round: %d ok=%v", layout.clusters, i, n, ok)
			}
			used[n], cursor = true, n
		}
		if _, ok := nextFree(layout.cluster, cursor, func(n NumericIdentity) bool { return used[n] }); ok {
			t.Errorf("%d clusters: a number free with all %d in use", layout.clusters, layout.size)
		}
		// One released: taken only after the others, but taken.
		delete(used, Compose(layout.cluster, 1000))
		if got, _ := nextFree(layout.cluster, Compose(layout.cluster, 1001), func(n NumericIdentity) bool { return used[n] }); got != Compose(layout.cluster, 1000) {
			t.Errorf("%d clusters: the one free number is %d, got %d", layout.clusters, Compose(layout.cluster, 1000), got)
		}
	}
}
