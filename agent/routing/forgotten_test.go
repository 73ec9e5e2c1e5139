package routing

import (
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/filament-net/filament/agent/node"
)

type nopIPsec struct{}

func (nopIPsec) AddPeer(node.Node, netip.Addr) error { return nil }
func (nopIPsec) RemovePeer(node.Node, netip.Addr)    {}

// With IPsec, a peer the router forgets (down, its record gone or
// refused) loses its XFRM policies and its native route: its pods'
// traffic then took the node's default route out in clear, strict mode
// included (the programs see its pods' addresses as the world's once
// their entries are withdrawn). Found 2026-12-07 by a review. Its pod
// CIDR keeps an unreachable route instead, below the route a peer gets.
func TestForgottenIPsecPeerNotRoutedInClear(t *testing.T) {
	inNetns(t)
	underlay(t, "172.30.0.1/24")
	if err := netlink.RouteAdd(&netlink.Route{Dst: ipnet(netip.MustParsePrefix("0.0.0.0/0")), Gw: net.ParseIP("172.30.0.254")}); err != nil {
		t.Fatal(err)
	}
	f := &fakeMaps{ipc: map[netip.Prefix]fakeValue{}, nodes: map[netip.Addr]bool{}}
	r := newRouter(f, Native, "n1")
	r.RequireNodes()
	r.SetIPsec(nopIPsec{})
	n2 := node.Node{Name: "n2", IPs: []string{"172.30.0.2"}, PodCIDRs: []string{"10.244.1.0/24"}}
	via := func() string { return routeVia("10.244.1.7") }
	r.NodeChanged(n2, false)
	if got := via(); got != "172.30.0.2" {
		t.Fatalf("n2's pod routed via %s, want n2", got)
	}
	for _, step := range []struct {
		what string
		do   func()
	}{
		{"n2 down", func() { r.SetNodeDown("n2", true) }},
		{"n2 back", func() { r.SetNodeDown("n2", false) }},
		{"n2's record gone", func() { r.NodeChanged(n2, true) }},
	} {
		step.do()
		got := via()
		if step.what == "n2 back" {
			if got != "172.30.0.2" {
				t.Errorf("%s: its pod routed via %s, want n2", step.what, got)
			}
			continue
		}
		if got == "172.30.0.254" {
			t.Errorf("%s: its pod routed to the default gateway, in clear", step.what)
		}
	}
}

// The unreachable route a forgotten peer's pod CIDR keeps gives way to a
// node given a wider CIDR around it (the kernel takes the longest prefix
// whatever the metric): found 2026-12-07 by a review, a node whose /24
// became a /23, and a /24 forgotten inside a /22 a new node got, stayed
// unreachable.
func TestForgottenFallbackGivesWayToAWiderCIDR(t *testing.T) {
	inNetns(t)
	underlay(t, "172.30.0.1/24")
	f := &fakeMaps{ipc: map[netip.Prefix]fakeValue{}, nodes: map[netip.Addr]bool{}}
	r := newRouter(f, Native, "n1")
	r.RequireNodes()
	r.SetIPsec(nopIPsec{})
	n2 := node.Node{Name: "n2", IPs: []string{"172.30.0.2"}, PodCIDRs: []string{"10.244.2.0/24"}}
	r.NodeChanged(n2, false)
	n2.PodCIDRs = []string{"10.244.2.0/23"}
	r.NodeChanged(n2, false)
	if got := routeVia("10.244.2.7"); got != "172.30.0.2" {
		t.Errorf("n2's /24 become a /23: its pod routed via %s, want n2", got)
	}
	n4 := node.Node{Name: "n4", IPs: []string{"172.30.0.4"}, PodCIDRs: []string{"10.244.8.0/24"}}
	r.NodeChanged(n4, false)
	r.NodeChanged(n4, true)
	r.NodeChanged(node.Node{Name: "n5", IPs: []string{"172.30.0.5"}, PodCIDRs: []string{"10.244.8.0/22"}}, false)
	if got := routeVia("10.244.8.9"); got != "172.30.0.5" {
		t.Errorf("a /24 forgotten inside n5's /22: its address routed via %s, want n5", got)
	}
}

// underlay adds a veth pair up0/up1 in the test's namespace with addr (a
// prefix) on up0, both up: the interface native routes' gateways are on.
func underlay(t testing.TB, addr string) {
	t.Helper()
	under := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "up0"}, PeerName: "up1"}
	if err := netlink.LinkAdd(under); err != nil {
		t.Fatal(err)
	}
	if err := netlink.AddrAdd(under, &netlink.Addr{IPNet: ipnet(netip.MustParsePrefix(addr))}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"up0", "up1"} {
		l, err := netlink.LinkByName(name)
		if err == nil {
			err = netlink.LinkSetUp(l)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// routeVia returns the gateway the kernel routes a to, or why none.
func routeVia(a string) string {
	rs, err := netlink.RouteGet(net.ParseIP(a))
	if err != nil {
		return "nowhere (" + err.Error() + ")"
	}
	return rs[0].Gw.String()
}
