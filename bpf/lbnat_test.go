package bpf

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"
)

// tcpWith is a TCP segment with the flags set sets on it.
func tcpWith(t *testing.T, src, dst net.IP, sport, dport uint16, set func(*layers.TCP)) []byte {
	t.Helper()
	ip := ipv4(src, dst, layers.IPProtocolTCP)
	l4 := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), Window: 1000}
	set(l4)
	l4.SetNetworkLayerForChecksum(ip)
	return serialize(t, eth(), ip, l4)
}

// monotonic is bpf_ktime_get_ns's clock now.
func monotonic(t *testing.T) uint64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return uint64(ts.Nano())
}

// natLife returns how long from now each direction's entry of the one
// NodePort translation of client port sport still lives.
func (f *fixture) natLife(client net.IP, sport uint16) (fwd, rev time.Duration) {
	f.t.Helper()
	now := monotonic(f.t)
	var k DatapathLbNatKey
	var v DatapathLbNat
	nf, nr := 0, 0
	for it := f.objs.LbNats.Iterate(); it.Next(&k, &v); {
		left := time.Duration(int64(v.Expires - now))
		switch {
		case v.Reverse == 0 && k.Saddr == ip4(client) && k.Sport == htons(sport):
			fwd, nf = left, nf+1
		case v.Reverse == 1 && v.Daddr == ip4(client) && v.Dport == htons(sport):
			rev, nr = left, nr+1
		}
	}
	if nf != 1 || nr != 1 {
		f.t.Fatalf("%d forward and %d reverse translations of client port %d, want one each", nf, nr, sport)
	}
	return fwd, rev
}

// A NodePort translation lives as long as its flow, not 6 h from its first
// packet whatever becomes of it. The attack: SYNs from many source ports
// to a NodePort whose backend is on another node, never answered (or
// connections opened and closed), each held one of the backend's 4,536
// SNAT ports for 6 h, so about one SYN every 5 s took the NodePort away
// from every client of this node for good. Now both directions' entries
// of a TCP flow live 60 s until a reply, 6 h after an answered flow's last
// packet, and 10 s from a FIN or RST in either direction (a SYN on the
// same tuple opens it again); a UDP flow's 60 s until a reply, then 300 s.
func TestNodePortNATLifetimes(t *testing.T) {
	nodeIP := net.IPv4(192, 168, 7, 1).To4()
	remote := net.IPv4(10, 9, 9, 9).To4()
	const fe, be = 30090, 8080
	within := func(t *testing.T, what string, fwd, rev, lo, hi time.Duration) {
		t.Helper()
		for _, d := range []struct {
			dir  string
			left time.Duration
		}{{"forward", fwd}, {"reverse", rev}} {
			if d.left <= lo || d.left > hi {
				t.Fatalf("%s: the %s entry lives %v more, want (%v, %v]", what, d.dir, d.left, lo, hi)
			}
		}
	}
	const slack = 2 * time.Second
	syn := func(l *layers.TCP) { l.SYN = true }
	synAck := func(l *layers.TCP) { l.SYN, l.ACK = true, true }
	ack := func(l *layers.TCP) { l.ACK = true }
	fin := func(l *layers.TCP) { l.FIN, l.ACK = true, true }
	rst := func(l *layers.TCP) { l.RST = true }

	for _, c := range []struct {
		name  string
		close func(f *fixture, sport, nsport uint16) // a packet that ends the flow
	}{
		{"client FIN", func(f *fixture, sport, _ uint16) {
			f.run(f.objs.FromNetdev, tcpWith(t, peerIP, nodeIP, sport, fe, fin))
		}},
		{"backend RST", func(f *fixture, _, nsport uint16) {
			f.run(f.objs.FromNetdev, tcpWith(t, remote, nodeIP, be, nsport, rst))
		}},
	} {
		t.Run("TCP "+c.name, func(t *testing.T) {
			f := load(t)
			f.lbService(1, nodeIP, fe, 6, lbFlagNodePort, netip.AddrPortFrom(netip.AddrFrom4([4]byte(remote)), be))
			const sport = 40000
			f.run(f.objs.FromNetdev, tcpWith(t, peerIP, nodeIP, sport, fe, syn)) // the verdict is the FIB's
			fwd, rev := f.natLife(peerIP, sport)
			within(t, "a SYN with no reply", fwd, rev, 0, 60*time.Second)
			nsport := htons(f.reverseNAT().Dport)
			f.run(f.objs.FromNetdev, tcpWith(t, remote, nodeIP, be, nsport, synAck))
			fwd, rev = f.natLife(peerIP, sport)
			within(t, "answered", fwd, rev, 6*time.Hour-slack, 6*time.Hour)
			f.run(f.objs.FromNetdev, tcpWith(t, peerIP, nodeIP, sport, fe, ack))
			fwd, rev = f.natLife(peerIP, sport)
			within(t, "answered, then the client's ACK", fwd, rev, 6*time.Hour-slack, 6*time.Hour)
			c.close(f, sport, nsport)
			fwd, rev = f.natLife(peerIP, sport)
			within(t, "after "+c.name, fwd, rev, 0, 10*time.Second)
			// Packets of the ending flow keep it at 10 s.
			f.run(f.objs.FromNetdev, tcpWith(t, remote, nodeIP, be, nsport, ack))
			fwd, rev = f.natLife(peerIP, sport)
			within(t, "a packet after "+c.name, fwd, rev, 0, 10*time.Second)
			// The client opens a connection from the same port: new again,
			// and answered, established again.
			f.run(f.objs.FromNetdev, tcpWith(t, peerIP, nodeIP, sport, fe, syn))
			fwd, rev = f.natLife(peerIP, sport)
			within(t, "a SYN on the closing flow's tuple", fwd, rev, 10*time.Second, 60*time.Second)
			f.run(f.objs.FromNetdev, tcpWith(t, remote, nodeIP, be, nsport, synAck))
			fwd, rev = f.natLife(peerIP, sport)
			within(t, "the new connection answered", fwd, rev, 6*time.Hour-slack, 6*time.Hour)
		})
	}

	t.Run("UDP", func(t *testing.T) {
		f := load(t)
		f.lbService(1, nodeIP, fe, 17, lbFlagNodePort, netip.AddrPortFrom(netip.AddrFrom4([4]byte(remote)), be))
		const sport = 40001
		f.run(f.objs.FromNetdev, udp(t, peerIP, nodeIP, sport, fe))
		fwd, rev := f.natLife(peerIP, sport)
		within(t, "a datagram with no reply", fwd, rev, 0, 60*time.Second)
		f.run(f.objs.FromNetdev, udp(t, peerIP, nodeIP, sport, fe))
		fwd, rev = f.natLife(peerIP, sport)
		within(t, "a second datagram with no reply", fwd, rev, 0, 60*time.Second)
		f.run(f.objs.FromNetdev, udp(t, remote, nodeIP, be, htons(f.reverseNAT().Dport)))
		fwd, rev = f.natLife(peerIP, sport)
		within(t, "answered", fwd, rev, 300*time.Second-slack, 300*time.Second)
	})
}
