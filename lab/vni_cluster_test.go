package lab_test

import (
	"testing"
	"time"

	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// A node of a remote cluster (a compromised cluster of the mesh) sends as
// a VNI only its own cluster's identities: until 2026-12-07 it could send
// this cluster's admin pod's identity, and c1's db, whose policy admits
// only its own cluster's app=a (admin), took the datagram as admin's. The
// node's real pods still reach a pod that admits them, and its drops are
// counted.
func TestRemoteClusterNodeSendsOnlyItsIdentities(t *testing.T) {
	l := labtest.UpClusters(t, 2, 1, "tunnel")
	admin := labtest.Pod(t, l, "c1/n1", "admin", "app=a")
	db := labtest.Pod(t, l, "c1/n1", "db", "app=b")
	web := labtest.Pod(t, l, "c2/n1", "web", "app=web")
	labtest.ImportPolicy(t, l, "c1/n1", udpFromA)
	connect(t, l, "c1/n1", "c2")
	for _, on := range []string{"c1/n1", "c2/n1"} {
		if out, err := labtest.NodeRun(t, l, on, "filament", "clustermesh", "status", "--wait", "30s"); err != nil {
			t.Fatalf("status --wait on %s: %v %s", on, err, out)
		}
	}
	got := datagrams(t, lab.NetNSPath(db.NetNS), 7000)
	eventually(t, "admin's datagram reaches db", func() bool {
		sendUDP(t, lab.NetNSPath(admin.NetNS), "", db.IP, 7000, "real")
		select {
		case <-got:
			return true
		case <-time.After(300 * time.Millisecond):
			return false
		}
	})
	var adminID uint32
	for _, ep := range labtest.Endpoints(t, l, "c1/n1") {
		if ep.PodName == "admin" || ep.IPv4.String() == admin.IP {
			adminID = uint32(ep.Identity)
		}
	}
	if adminID == 0 {
		t.Fatal("admin's endpoint not listed")
	}
	c1n1, _ := l.Node("c1/n1")
	c2n1, _ := l.Node("c2/n1")
	before := dropCount(t, l, "c1/n1", "tunnel identity not of the sending node's cluster")
	vx := forgedVXLAN(t, adminID, web.IP, db.IP, 7000, "forged")
	for range 5 {
		sendUDP(t, lab.NetNSPath(c2n1.NetNS), "", c1n1.IP, 8472, string(vx))
	}
	if m := arrives(got, "forged", 2*time.Second); m != "" {
		t.Fatalf("db took c2's node's datagram as c1's admin: %q", m)
	}
	eventually(t, "the forged VNI counted as a drop", func() bool {
		return dropCount(t, l, "c1/n1", "tunnel identity not of the sending node's cluster") >= before+5
	})
	// c2's real pods still reach c1's pods that admit them (their VNIs
	// are c2's identities).
	labtest.ImportPolicy(t, l, "c1/n1", udpFromA+`  - fromEndpoints: [{matchLabels: {app: web, io.cilium.k8s.policy.cluster: c2}}]
    toPorts: [{ports: [{port: "7000", protocol: UDP}]}]
`)
	eventually(t, "c2's web reaches db", func() bool {
		sendUDP(t, lab.NetNSPath(web.NetNS), "", db.IP, 7000, "web")
		return arrives(got, "web", 300*time.Millisecond) != ""
	})
}
