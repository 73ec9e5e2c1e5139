package lab_test

import (
	"encoding/binary"
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/filament-net/filament/agent/api/types"
	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

const icmpErrorsPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: asker}
spec:
  endpointSelector: {matchLabels: {app: asker}}
  ingress:
  - fromEntities: [host]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  egress:
  - toEndpoints: [{matchLabels: {app: quiet}}]
    toPorts: [{ports: [{port: "9999", protocol: UDP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: quiet}
spec:
  endpointSelector: {matchLabels: {app: quiet}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: asker}}]
    toPorts: [{ports: [{port: "9999", protocol: UDP}]}]
  egress:
  - toEntities: [host]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`

// refused sends a datagram from the namespace at path to addr, where
// nothing listens, and returns the error of the read that follows: the
// kernel's ECONNREFUSED when the destination's ICMP port unreachable came
// back.
func refused(t *testing.T, path, addr string) error {
	t.Helper()
	var rerr error
	if err := inNS(t, path, func() error {
		c, err := net.DialTimeout("udp4", addr, time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write([]byte("anyone?")); err != nil {
			return err
		}
		_, rerr = c.Read(make([]byte, 64))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return rerr
}

// TestICMPErrorsOfTrackedFlows: an ICMP error about a flow a pod's
// policy let through reaches the pod whatever its policy says about ICMP
// (as conntrack's RELATED): a UDP datagram to a pod where nothing listens
// gets its port unreachable back, through the quiet pod's egress policy
// and the asker's ingress policy (neither names ICMP), on one node and
// across nodes, so the asker's socket fails at once (ECONNREFUSED)
// instead of waiting. An ICMP error about no flow of the pod (forged by
// another pod, quoting a tuple the asker never used) stays denied
// (policy denied). Before, every ICMP error to or from a pod with
// policy in that direction was dropped unless the policy allowed ICMP
// type 3.
func TestICMPErrorsOfTrackedFlows(t *testing.T) {
	for _, routing := range []string{"tunnel", "native"} {
		t.Run(routing, func(t *testing.T) { testICMPErrors(t, routing) })
	}
}

func testICMPErrors(t *testing.T, routing string) {
	l := labtest.UpRouting(t, 2, routing)
	asker := labtest.Pod(t, l, "n1", "asker", "app=asker")
	near := labtest.Pod(t, l, "n1", "near", "app=quiet")
	far := labtest.Pod(t, l, "n2", "far", "app=quiet")
	forger := labtest.Pod(t, l, "n1", "forger", "app=forger")
	labtest.ImportPolicy(t, l, "n1", icmpErrorsPolicy)
	for _, q := range []*lab.Pod{near, far} {
		var err error
		firstContact(t, l, "port unreachable from "+q.Name, func() bool {
			err = refused(t, lab.NetNSPath(asker.NetNS), q.IP+":9999")
			return errors.Is(err, syscall.ECONNREFUSED)
		})
	}

	// The forged error: from the forger, an ICMP port unreachable to the
	// asker quoting a datagram from the asker's address to the quiet pod
	// on a port pair the asker never used.
	denied := newTally()
	labtest.Monitor(t, l, "n1", "drop", func(ev types.Event) {
		if ev.Protocol == "ICMP" && ev.Dst.Addr().String() == asker.IP {
			denied.add(ev.Reason)
		}
	})
	inner := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP,
		SrcIP: net.ParseIP(asker.IP).To4(), DstIP: net.ParseIP(near.IP).To4(), Length: 28}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true},
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(3, 3)}, inner); err != nil {
		t.Fatal(err)
	}
	msg := append(buf.Bytes(), make([]byte, 8)...)
	binary.BigEndian.PutUint16(msg[28:], 31313) // source port
	binary.BigEndian.PutUint16(msg[30:], 9999)  // destination port
	binary.BigEndian.PutUint16(msg[32:], 8)     // length
	binary.BigEndian.PutUint16(msg[2:], 0)      // checksum, again over the whole message
	binary.BigEndian.PutUint16(msg[2:], ^onesSum(msg))
	eventually(t, "the forged ICMP error dropped at the asker", func() bool {
		if err := inNS(t, lab.NetNSPath(forger.NetNS), func() error {
			c, err := net.ListenPacket("ip4:icmp", "0.0.0.0")
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.WriteTo(msg, &net.IPAddr{IP: net.ParseIP(asker.IP)})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return denied.get("policy denied") > 0
	})
}

// onesSum is the ones' complement sum of b (the Internet checksum, not
// yet inverted).
func onesSum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

// TestNodePortPortUnreachable sends a UDP datagram from a host outside the
// cluster through a NodePort to a backend port where nothing listens: the
// backend's port unreachable, about the translated datagram, must reach
// the client translated back (from the frontend, quoting the datagram as
// the client sent it), as the kernel's NAT would, so the client's socket
// fails at once (ECONNREFUSED): through n1's NodePort (backend on n2: DNAT
// and SNAT) and n2's (a local backend), in tunnel and native routing and
// through WireGuard. Before, the error went to n1's own stack (remote backend) or to the
// client untranslated (local backend), which matched no socket of the
// client's: it waited.
func TestNodePortPortUnreachable(t *testing.T) {
	for _, v := range nodePortModes {
		t.Run(v.name, func(t *testing.T) {
			l := labtest.UpRouting(t, 2, v.routing, v.args...)
			quiet := labtest.Pod(t, l, "n2", "quiet", "app=quiet")
			upsertNodePort(t, l, remoteNodePort("quiet", "10.96.0.23", "UDP", 80, 9999, 30084, quiet.IP), "n1", "n2")
			out := labtest.UnderlayHost(t, l, "out", "172.30.0.50")
			for _, via := range []string{"n1", "n2"} {
				n, err := l.Node(via)
				if err != nil {
					t.Fatal(err)
				}
				var last error
				firstContact(t, l, "port unreachable through "+via+"'s NodePort", func() bool {
					last = refused(t, out, n.IP+":30084")
					return errors.Is(last, syscall.ECONNREFUSED)
				})
			}
		})
	}
}
