package lab_test

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

const vxlanNodePort = `apiVersion: filament.io/v1
kind: Service
metadata: {name: tunnel, namespace: tenant}
spec:
  type: NodePort
  clusterIP: 10.96.0.60
  ports:
  - {name: vx, port: 80, targetPort: 8472, nodePort: 30082, protocol: UDP}
backends:
- {ip: %s, node: n2, state: active}
`

const udpFromA = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [{port: "7000", protocol: UDP}]}]
`

// A Service whose backend is another node's address on its VXLAN port
// (a tenant's hand-written EndpointSlice can name a node's address: a
// host-network backend) made n1 carry a world host's datagram, sent to
// its NodePort, to n2's VXLAN socket from n1's own address, which n2
// trusts as a node's: the attacker's VNI became the source identity, and
// pod b, whose policy admits only app=a, took a datagram as a's. The
// NodePort translation now refuses a node's address on a control port
// (nodeport_to_control) and counts the drop.
func TestNodePortToNodeControlPort(t *testing.T) {
	l := labtest.UpRouting(t, 2, "tunnel")
	a := labtest.Pod(t, l, "n1", "a", "app=a")
	b := labtest.Pod(t, l, "n2", "b", "app=b")
	labtest.ImportPolicy(t, l, "n2", udpFromA)
	n1, _ := l.Node("n1")
	n2, _ := l.Node("n2")

	got := datagrams(t, lab.NetNSPath(b.NetNS), 7000)
	// The policy works: a's own datagrams arrive, the attacker's own do not.
	eventually(t, "a's datagram reaches b", func() bool {
		sendUDP(t, lab.NetNSPath(a.NetNS), "", b.IP, 7000, "real")
		select {
		case <-got:
			return true
		case <-time.After(300 * time.Millisecond):
			return false
		}
	})

	labtest.MustUpsertService(t, l, "n1", fmt.Sprintf(vxlanNodePort, n2.IP))
	eventually(t, "the NodePort on n1", func() bool {
		for _, s := range labtest.Services(t, l, "n1") {
			if s.Name == "tunnel" && len(s.Frontends) > 1 {
				return true
			}
		}
		return false
	})
	vni := uint32(labtest.Endpoints(t, l, "n1")[0].Identity)
	vx := forgedVXLAN(t, vni, a.IP, b.IP, 7000, "forged")

	attacker := labtest.UnderlayHost(t, l, "evil", "172.30.0.201")
	before := dropCount(t, l, "n1", "node control port")
	for i := 0; i < 5; i++ {
		sendUDP(t, attacker, "", n1.IP, 30082, string(vx))
	}
	if m := arrives(got, "forged", 2*time.Second); m != "" {
		t.Fatalf("b took the attacker's VXLAN through n1's NodePort as a's: %q", m)
	}
	eventually(t, "the NodePort translation to n2's VXLAN port counted as a drop", func() bool {
		return dropCount(t, l, "n1", "node control port") >= before+5
	})
}

// datagrams listens on UDP port in the namespace at path until cleanup
// and passes on each datagram as "payload from address".
func datagrams(t *testing.T, path string, port int) <-chan string {
	t.Helper()
	got := make(chan string, 64)
	var pc net.PacketConn
	if err := ns.WithNetNSPath(path, func(ns.NetNS) error {
		var err error
		pc, err = net.ListenPacket("udp4", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 256)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			select {
			case got <- fmt.Sprintf("%s from %s", buf[:n], from):
			default:
			}
		}
	}()
	return got
}

// arrives returns the first datagram from got whose payload starts with
// prefix within wait ("" if none: others, a late one of an earlier
// probe, are skipped).
func arrives(got <-chan string, prefix string, wait time.Duration) string {
	deadline := time.After(wait)
	for {
		select {
		case m := <-got:
			if strings.HasPrefix(m, prefix) {
				return m
			}
		case <-deadline:
			return ""
		}
	}
}

// forgedVXLAN is a VXLAN datagram with vni carrying a UDP datagram from
// src to dst:dport with payload.
func forgedVXLAN(t *testing.T, vni uint32, src, dst string, dport uint16, payload string) []byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: net.ParseIP(src).To4(), DstIP: net.ParseIP(dst).To4()}
	udp := &layers.UDP{SrcPort: 40000, DstPort: layers.UDPPort(dport)}
	udp.SetNetworkLayerForChecksum(ip)
	inner := serialize(t,
		&layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 9}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 8}, EthernetType: layers.EthernetTypeIPv4},
		ip, udp, gopacket.Payload(payload))
	return serialize(t, &layers.VXLAN{ValidIDFlag: true, VNI: vni}, gopacket.Payload(inner))
}

const denyWebEgress = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: no-web}
spec:
  endpointSelector: {matchLabels: {app: a}}
  egress: [{toEntities: [all]}]
  egressDeny: [{toEndpoints: [{matchLabels: {app: web}}]}]
`

// A pod whose egress denies app=web reaches no web pod through another
// node's NodePort either: until 2026-12-07 its connection to n2's
// address and node port was judged as to n2 (remote-node, the node
// port, allowed), and n2 translated it to the web pod; only this node's
// own NodePort was translated at the pod's socket. Another pod, denied
// nothing, reaches the service at both nodes' addresses and sees the
// node's address as its peer.
func TestPodToOtherNodesNodePortJudgedAsTheBackend(t *testing.T) {
	for _, routing := range []string{"native", "tunnel"} {
		t.Run(routing, func(t *testing.T) {
			l := labtest.UpRouting(t, 2, routing)
			a := labtest.Pod(t, l, "n1", "a", "app=a")
			c := labtest.Pod(t, l, "n1", "c", "app=c")
			web := labtest.Pod(t, l, "n2", "web", "app=web")
			labtest.ServeName(t, lab.NetNSPath(web.NetNS), 8080, "web")
			labtest.ImportPolicy(t, l, "n1", denyWebEgress)
			labtest.MustUpsertService(t, l, "n1", fmt.Sprintf(`apiVersion: filament.io/v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.0.61
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30090}
backends:
- {ip: %s, node: n2, state: active}
`, web.IP))
			n1, _ := l.Node("n1")
			n2, _ := l.Node("n2")
			for _, on := range []string{"n1", "n2"} {
				eventually(t, "the service on "+on, func() bool {
					ss := labtest.Services(t, l, on)
					return len(ss) == 1 && len(ss[0].Frontends) > 1
				})
			}
			for _, node := range []string{n1.IP, n2.IP} {
				addr := node + ":30090"
				eventually(t, "c reaches web at "+addr, func() bool {
					name, err := labtest.Who(lab.NetNSPath(c.NetNS), addr)
					return err == nil && name == "web"
				})
				if name, err := labtest.Who(lab.NetNSPath(a.NetNS), addr); err == nil {
					t.Errorf("a, whose egress denies app=web, reached %q at %s", name, addr)
				}
			}
			conn, err := labtest.Open(lab.NetNSPath(c.NetNS), n2.IP+":30090")
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if got := conn.RemoteAddr().String(); got != n2.IP+":30090" {
				t.Errorf("c's peer at n2's NodePort is %s, want %s:30090", got, n2.IP)
			}
		})
	}
}
