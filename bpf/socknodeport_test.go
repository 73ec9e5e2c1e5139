package bpf

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
)

// sockPeerEnv makes the test binary (TestMain) connect an IPv4 TCP socket
// to the address it names and print the peer address getpeername reports.
const sockPeerEnv = "FILAMENT_BPF_SOCK_PEER"

func sockPeer(to string) error {
	c, err := net.DialTimeout("tcp4", to, 3e9)
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Println(c.RemoteAddr())
	return nil
}

// A pod connecting to another node of the cluster's address at a node
// port is translated at its socket as at this node's own address (every
// node of the cluster has the same node ports), so its egress policy
// judges the backend; it sees the node's address as its peer. A remote
// cluster's node's address is not translated (its node ports are its
// own services'), nor a node port of no service. Until 2026-12-07 only
// this node's address was: the pod's egress was judged against the other
// node (remote-node, the node port), which translated the flow to a
// backend the pod's egress deny named (found by a review).
func TestSocketTranslatesClusterNodesNodePorts(t *testing.T) {
	root := cgroup2Root(t)
	inNetns(t) // the connects cannot leave: an address not translated is unreachable
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	self, other, remote := net.IPv4(192, 168, 7, 1).To4(), net.IPv4(192, 168, 7, 2).To4(), net.IPv4(192, 168, 9, 3).To4()
	f := load(t)
	k := uint32(0)
	if err := f.objs.Config.Put(&k, &DatapathNodeConfig{NodeIp: ip4(self)}); err != nil {
		t.Fatal(err)
	}
	for a, v := range map[uint32]uint32{ip4(other): 3, ip4(remote): 1} { // NODE_F_KNOWN, NODE_F_CLUSTER
		if err := f.objs.Nodes.Put(&a, &v); err != nil {
			t.Fatal(err)
		}
	}
	be := closingListener(t)
	const lbFlagNodePort = 2
	f.lbService(1, self, 30080, 6, lbFlagNodePort, be)
	mk := DatapathLbMemberKey{Id: 1, Backend: 1}
	a := be.Addr().As4()
	if err := f.objs.LbMembers.Put(&mk, &DatapathLbBackend{Ip: ip4(a[:]), Port: htons(be.Port()), Id: 1}); err != nil {
		t.Fatal(err)
	}
	cg := f.podCgroup(root, map[ebpf.AttachType]*ebpf.Program{
		ebpf.AttachCGroupInet4Connect:     f.objs.SockConnect4,
		ebpf.AttachCgroupInet4GetPeername: f.objs.SockGetpeername4,
	})
	for _, c := range []struct {
		to   netip.AddrPort
		want string // the peer; "": not translated (unreachable here)
	}{
		{netip.AddrPortFrom(netip.AddrFrom4([4]byte(self)), 30080), "192.168.7.1:30080"},
		{netip.AddrPortFrom(netip.AddrFrom4([4]byte(other)), 30080), "192.168.7.2:30080"},
		{netip.AddrPortFrom(netip.AddrFrom4([4]byte(remote)), 30080), ""},
		{netip.AddrPortFrom(netip.AddrFrom4([4]byte(other)), 30081), ""},
	} {
		out, err := inCgroup(cg, sockPeerEnv, c.to.String()).CombinedOutput()
		got := strings.TrimSpace(string(out))
		switch {
		case c.want == "" && err == nil:
			t.Errorf("%s: translated (peer %s), want not", c.to, got)
		case c.want != "" && (err != nil || got != c.want):
			t.Errorf("%s: %v, peer %q, want translated with peer %s", c.to, err, got, c.want)
		}
	}
	// The node's own sockets (its namespace registered with no pod
	// address) are not translated at another node's address: no egress
	// policy judges them, and a Service's node port must not take the
	// node's gossip or WireGuard datagrams to another node.
	cookie, host := netnsCookie(t), uint32(0)
	if err := f.objs.LbNetns.Put(&cookie, &host); err != nil {
		t.Fatal(err)
	}
	to := netip.AddrPortFrom(netip.AddrFrom4([4]byte(other)), 30080)
	if out, err := inCgroup(cg, sockPeerEnv, to.String()).CombinedOutput(); err == nil {
		t.Errorf("the node's own socket to %s translated (peer %s)", to, strings.TrimSpace(string(out)))
	}
}
