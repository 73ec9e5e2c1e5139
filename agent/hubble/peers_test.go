package hubble

import (
	"net/netip"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/hubble/pb/flow"
	"github.com/filament-net/filament/agent/hubble/pb/peer"
	"github.com/filament-net/filament/agent/monitor"
	"github.com/filament-net/filament/agent/node"
)

// A remote cluster's pod is named from its address's ipcache entry and
// its identity's cluster label; a local endpoint by its endpoint.
func TestRemoteEndpointNamed(t *testing.T) {
	remote := netip.MustParseAddr("10.102.0.2")
	m := Meta{NodeName: "n1", ClusterName: "c2",
		Pod: func(ep uint16) (string, string) { return "default", "db" },
		PodAt: func(ip netip.Addr) (string, string) {
			if ip == remote {
				return "shop", "web-7"
			}
			return "", ""
		},
		Names: func(ip netip.Addr, ep uint16) []string {
			if ip == remote && ep == 1 {
				return []string{"web.shop.test"}
			}
			return nil
		}}
	f := m.Flow(monitor.Event{Time: time.Now(), Type: "drop", Direction: "ingress", Endpoint: 1, Protocol: "TCP",
		Src: netip.AddrPortFrom(remote, 4000), Dst: netip.MustParseAddrPort("10.101.0.2:5432"),
		SrcLabels: []string{"k8s:app=web", "k8s:filament.io/cluster=c1"}, DstLabels: []string{"k8s:app=db"}})
	if f.Source.PodName != "web-7" || f.Source.Namespace != "shop" || f.Source.ClusterName != "c1" {
		t.Errorf("remote source: %v", f.Source)
	}
	if f.Destination.PodName != "db" || f.Destination.ClusterName != "c2" || f.NodeName != "c2/n1" {
		t.Errorf("local destination: %v (node %s)", f.Destination, f.NodeName)
	}
	if len(f.SourceNames) != 1 || f.SourceNames[0] != "web.shop.test" || f.DestinationNames != nil {
		t.Errorf("names: source %v destination %v", f.SourceNames, f.DestinationNames)
	}
	if f.Verdict != flow.Verdict_DROPPED {
		t.Errorf("verdict %v", f.Verdict)
	}
}

// Peers announce every node (local and remote names alike cluster/node)
// at the Hubble port with the server name of its certificate, then their
// changes; a subscriber too far behind is cut off, not waited for.
func TestPeers(t *testing.T) {
	p := NewPeers()
	p.NodeChanged(node.Node{Name: "n1", Cluster: "c1", IPs: []string{"172.30.1.1"}}, false)
	p.NodeChanged(node.Node{Name: "c2/n1", Cluster: "c2", IPs: []string{"172.30.2.1"}}, false)
	if _, _, _, ok := p.subscribe(); ok {
		t.Fatal("announced before SetPort")
	}
	p.SetPort(4244)
	all, ch, cancel, ok := p.subscribe()
	if !ok || len(all) != 2 {
		t.Fatalf("subscribe: %v %v", all, ok)
	}
	if all[0].Name != "c1/n1" || all[0].Address != "172.30.1.1:4244" || all[0].Tls.ServerName != "n1.c1.hubble-grpc.filament.io" ||
		all[1].Name != "c2/n1" || all[1].Address != "172.30.2.1:4244" || all[1].Tls.ServerName != "n1.c2.hubble-grpc.filament.io" {
		t.Errorf("announced: %v", all)
	}
	p.NodeChanged(node.Node{Name: "n1", Cluster: "c1", IPs: []string{"172.30.1.1"}}, false) // no change
	p.NodeChanged(node.Node{Name: "n1", Cluster: "c1", IPs: []string{"172.30.1.9"}}, false)
	p.NodeChanged(node.Node{Name: "c2/n1", Cluster: "c2"}, true)
	if cn := <-ch; cn.Type != peer.ChangeNotificationType_PEER_UPDATED || cn.Address != "172.30.1.9:4244" {
		t.Errorf("update: %v", cn)
	}
	if cn := <-ch; cn.Type != peer.ChangeNotificationType_PEER_DELETED || cn.Name != "c2/n1" {
		t.Errorf("delete: %v", cn)
	}
	select {
	case cn := <-ch:
		t.Errorf("a change for no change: %v", cn)
	default:
	}
	for i := range subBuffer + 1 {
		p.NodeChanged(node.Node{Name: "x", Cluster: "c1", IPs: []string{netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}).String()}}, false)
	}
	n := 0
	for range ch {
		n++
	}
	if n != subBuffer {
		t.Errorf("a slow subscriber got %d changes before being cut off, want %d", n, subBuffer)
	}
	cancel() // after the cut: no double close
}
