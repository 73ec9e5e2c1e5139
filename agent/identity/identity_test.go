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
