package bpf

import (
	"encoding/binary"
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// icmpError is an ICMP port unreachable from src to dst quoting a UDP
// datagram from qsrc:qsport to qdst:qdport (its IPv4 header and first 8
// bytes).
func icmpError(t *testing.T, src, dst, qsrc, qdst net.IP, qsport, qdport uint16) []byte {
	t.Helper()
	quoted := serialize(t, ipv4(qsrc, qdst, layers.IPProtocolUDP))
	quoted = append(quoted, make([]byte, 8)...)
	binary.BigEndian.PutUint16(quoted[20:], qsport)
	binary.BigEndian.PutUint16(quoted[22:], qdport)
	binary.BigEndian.PutUint16(quoted[24:], 8)
	return serialize(t, eth(), ipv4(src, dst, layers.IPProtocolICMPv4),
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(3, 3)}, gopacket.Payload(quoted))
}

// An ICMP error about a live flow of a pod passes its policy in either
// direction as that flow's (conntrack's RELATED), though no rule allows
// ICMP: a port unreachable coming in about the pod's own datagram, and one
// the pod sends about a datagram it received. One about no flow of the pod
// (another port pair), or quoting a packet the pod did not send while
// coming to it, is judged as any ICMP (denied).
func TestICMPErrorOfTrackedFlow(t *testing.T) {
	f := load(t) // the pod enforces both directions
	f.rule(dirEgress, peerID, 17, 9999, 24, false)
	f.rule(dirIngress, peerID, 17, 53, 24, false)
	if r := f.run(f.objs.FromContainer, udp(t, podIP, peerIP, 4000, 9999)); r != actOK {
		t.Fatalf("the pod's datagram: %d", r)
	}
	if r := f.run(f.objs.ToContainer, icmpError(t, peerIP, podIP, podIP, peerIP, 4000, 9999)); r != actOK {
		t.Errorf("port unreachable about the pod's datagram: %d, want passed", r)
	}
	if r := f.run(f.objs.ToContainer, icmpError(t, peerIP, podIP, podIP, peerIP, 4001, 9999)); r != actShot {
		t.Errorf("port unreachable about a datagram the pod never sent: %d, want dropped", r)
	}
	other := net.IPv4(10, 0, 0, 77).To4()
	if r := f.run(f.objs.ToContainer, icmpError(t, peerIP, podIP, other, peerIP, 4000, 9999)); r != actShot {
		t.Errorf("an error to the pod quoting another sender's datagram: %d, want dropped", r)
	}
	if n := f.count(reasonDenied, dirIngress); n != 2 {
		t.Errorf("%d policy-denied drops at ingress, want 2", n)
	}

	if r := f.run(f.objs.ToContainer, udp(t, peerIP, podIP, 5000, 53)); r != actOK {
		t.Fatalf("the peer's datagram: %d", r)
	}
	if r := f.run(f.objs.FromContainer, icmpError(t, podIP, peerIP, peerIP, podIP, 5000, 53)); r != actOK {
		t.Errorf("the pod's port unreachable about the datagram it received: %d, want passed", r)
	}
	if r := f.run(f.objs.FromContainer, icmpError(t, podIP, peerIP, peerIP, podIP, 5001, 53)); r != actShot {
		t.Errorf("the pod's port unreachable about no datagram it received: %d, want dropped", r)
	}
}
