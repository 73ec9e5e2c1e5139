package datapath

import (
	"testing"

	"github.com/filament-net/filament/agent/identity"
)

// The nodes map's values as bpf/lib/maps.h reads them: this cluster's
// nodes flagged, a remote cluster's with its ID and the identity layout's
// shift (NODE_CLUSTER_ID, NODE_CLUSTER_SHIFT), which bound its VNIs.
func TestNodeValue(t *testing.T) {
	defer func(s, m, l uint32) { identity.ClusterIDShift, identity.ClusterIDMax, identity.LocalMax = s, m, l }(identity.ClusterIDShift, identity.ClusterIDMax, identity.LocalMax)
	for _, tc := range []struct {
		clusters  int
		ofCluster bool
		remote    uint32
		want      uint32
	}{
		{255, true, 0, nodeKnown | nodeOfCluster},
		{255, true, 9, nodeKnown | nodeOfCluster}, // this cluster's: no bound
		{255, false, 0, nodeKnown},                // unknown cluster: unbounded, as before
		{255, false, 7, nodeKnown | 7<<8 | 16<<24},
		{511, false, 300, nodeKnown | 300<<8 | 15<<24},
	} {
		if err := identity.SetMaxClusters(tc.clusters); err != nil {
			t.Fatal(err)
		}
		if got := nodeValue(tc.ofCluster, tc.remote); got != tc.want {
			t.Errorf("%d clusters, of this cluster %v, remote %d: %#x, want %#x", tc.clusters, tc.ofCluster, tc.remote, got, tc.want)
		}
	}
}
