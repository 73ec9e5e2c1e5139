package bpf

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
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

// natEach calls fn with every NodePort translation and the table holding
// it: established flows' (lb_nats), then new ones' (lb_nats_new).
func (f *fixture) natEach(fn func(m *ebpf.Map, k DatapathLbNatKey, v DatapathLbNat)) {
	f.t.Helper()
	for _, m := range []*ebpf.Map{f.objs.LbNats, f.objs.LbNatsNew} {
		var k DatapathLbNatKey
		var v DatapathLbNat
		var keys []DatapathLbNatKey
		var vals []DatapathLbNat
		it := m.Iterate()
		for it.Next(&k, &v) {
			keys, vals = append(keys, k), append(vals, v)
		}
		if err := it.Err(); err != nil {
			f.t.Fatal(err)
		}
		for i := range keys {
			fn(m, keys[i], vals[i])
		}
	}
}

// natEntry returns the live NodePort translation of k and the table
// holding it (lb_nats before lb_nats_new, as the datapath looks); it fails
// the test when neither does.
func (f *fixture) natEntry(k DatapathLbNatKey) (*ebpf.Map, DatapathLbNat) {
	f.t.Helper()
	var v DatapathLbNat
	now := monotonic(f.t)
	for _, m := range []*ebpf.Map{f.objs.LbNats, f.objs.LbNatsNew} {
		if m.Lookup(&k, &v) == nil && v.Expires >= now {
			return m, v
		}
	}
	f.t.Fatalf("no translation of %+v", k)
	return nil, v
}

// natDelete deletes k's translation from both tables; it fails the test
// when neither had one.
func (f *fixture) natDelete(k DatapathLbNatKey) {
	f.t.Helper()
	n := 0
	for _, m := range []*ebpf.Map{f.objs.LbNats, f.objs.LbNatsNew} {
		if m.Delete(&k) == nil {
			n++
		}
	}
	if n == 0 {
		f.t.Fatalf("no translation of %+v to delete", k)
	}
}

// natLife returns how long from now each direction's entry of the one
// NodePort translation of client port sport still lives.
func (f *fixture) natLife(client net.IP, sport uint16) (fwd, rev time.Duration) {
	f.t.Helper()
	now := monotonic(f.t)
	nf, nr := 0, 0
	f.natEach(func(_ *ebpf.Map, k DatapathLbNatKey, v DatapathLbNat) {
		left := time.Duration(int64(v.Expires - now))
		switch {
		case v.Reverse == 0 && k.Saddr == ip4(client) && k.Sport == htons(sport):
			fwd, nf = left, nf+1
		case v.Reverse == 1 && v.Daddr == ip4(client) && v.Dport == htons(sport):
			rev, nr = left, nr+1
		}
	})
	if nf != 1 || nr != 1 {
		f.t.Fatalf("%d forward and %d reverse translations of client port %d, want one each", nf, nr, sport)
	}
	return fwd, rev
}

// natLifeIn returns a check that both entries of the translation of
// client port sport (from peerIP) live more than lo and at most hi from
// now, after what was sent.
func (f *fixture) natLifeIn(sport uint16) func(what string, lo, hi time.Duration) {
	return func(what string, lo, hi time.Duration) {
		f.t.Helper()
		fwd, rev := f.natLife(peerIP, sport)
		if fwd <= lo || fwd > hi || rev <= lo || rev > hi {
			f.t.Fatalf("after %s: the entries live %v and %v more, want (%v, %v]", what, fwd, rev, lo, hi)
		}
	}
}

// A NodePort translation lives as long as its flow, not 6 h from its last
// packet whatever becomes of it. The attack: SYNs from many (spoofed)
// source ports to a NodePort whose backend is on another node each held
// one of the backend's 4,536 SNAT ports for 6 h, answered by the backend
// or not, so about one SYN every 5 s took the NodePort away from every
// client of this node for good. Now both directions' entries of a TCP
// flow live 60 s until the client answers the backend's SYN-ACK (a blind
// ACK before any reply does not count), 6 h after an established flow's
// last packet (a FIN from one side alone is a half-close), and 10 s once
// both sides sent a FIN or either an RST; a SYN on the same tuple opens
// it again. A UDP flow: 60 s until the client sends after a reply, then
// 300 s.
func TestNodePortNATLifetimes(t *testing.T) {
	nodeIP := net.IPv4(192, 168, 7, 1).To4()
	remote := net.IPv4(10, 9, 9, 9).To4()
	const fe, be = 30090, 8080
	const slack = 2 * time.Second
	const (
		new_    = 60 * time.Second
		closing = 10 * time.Second
	)
	type step struct {
		what    string
		backend bool // sent by the backend (else by the client)
		seg     natSeg
		lo, hi  time.Duration // both entries' remaining life after it
	}
	// The client's numbers start at 1001, the backend's at 5001.
	est := []time.Duration{6*time.Hour - slack, 6 * time.Hour}
	open := []step{
		{"a SYN with no reply", false, natSeg{seq: 1000, syn: true}, 0, new_},
		{"a blind ACK before any reply", false, natSeg{seq: 1001, ack: 77, ackf: true}, 0, new_},
		{"the backend's SYN-ACK, not yet answered", true, natSeg{seq: 5000, ack: 1001, syn: true, ackf: true}, 0, new_},
		{"the client's ACK", false, natSeg{seq: 1001, ack: 5001, ackf: true}, est[0], est[1]},
		{"the backend's data", true, natSeg{seq: 5001, ack: 1001, ackf: true, data: 100}, est[0], est[1]},
	}
	for _, c := range []struct {
		name  string
		steps []step
	}{
		{"FIN from both sides", []step{
			{"the client's FIN (a half-close)", false, natSeg{seq: 1001, ack: 5101, ackf: true, fin: true}, est[0], est[1]},
			{"the backend's data after it", true, natSeg{seq: 5101, ack: 1002, ackf: true, data: 10}, est[0], est[1]},
			{"the backend's FIN", true, natSeg{seq: 5111, ack: 1002, ackf: true, fin: true}, 0, closing},
			{"the client's last ACK", false, natSeg{seq: 1002, ack: 5112, ackf: true}, 0, closing},
		}},
		{"a half-closed flow's port reused", []step{
			{"the client's FIN (a half-close)", false, natSeg{seq: 1001, ack: 5101, ackf: true, fin: true}, est[0], est[1]},
			{"the client's SYN from the same port (the old flow died unseen)", false, natSeg{seq: 90000, syn: true}, est[0], est[1]},
			{"the backend's SYN-ACK of the new connection", true, natSeg{seq: 70000, ack: 90001, syn: true, ackf: true}, est[0], est[1]},
			{"the client's ACK of it", false, natSeg{seq: 90001, ack: 70001, ackf: true}, est[0], est[1]},
			{"the backend's FIN of the new connection (one side only)", true, natSeg{seq: 70001, ack: 90001, ackf: true, fin: true}, est[0], est[1]},
			{"the client's FIN", false, natSeg{seq: 90001, ack: 70002, ackf: true, fin: true}, 0, closing},
		}},
		{"backend RST", []step{
			{"the backend's RST", true, natSeg{seq: 5101, rst: true}, 0, closing},
		}},
		{"client RST", []step{
			{"the client's RST", false, natSeg{seq: 1001, rst: true}, 0, closing},
			{"a late packet of the backend", true, natSeg{seq: 5101, ack: 1001, ackf: true}, 0, closing},
		}},
	} {
		t.Run("TCP "+c.name, func(t *testing.T) {
			f := load(t)
			const sport = 40000
			client, backend := f.nodePortFlow(nodeIP, remote, fe, be, sport) // the verdicts are the FIB's
			steps := append(append(append([]step{}, open...), c.steps...),
				step{"a SYN on the closing flow's tuple", false, natSeg{seq: 200000, syn: true}, closing, new_},
				step{"its SYN-ACK", true, natSeg{seq: 300000, ack: 200001, syn: true, ackf: true}, closing, new_},
				step{"its ACK", false, natSeg{seq: 200001, ack: 300001, ackf: true}, est[0], est[1]})
			for i, s := range steps {
				if s.backend {
					backend(s.seg)
				} else {
					client(s.seg)
				}
				fwd, rev := f.natLife(peerIP, sport)
				for _, d := range []struct {
					dir  string
					left time.Duration
				}{{"forward", fwd}, {"reverse", rev}} {
					if d.left <= s.lo || d.left > s.hi {
						t.Fatalf("after %s (step %d): the %s entry lives %v more, want (%v, %v]", s.what, i, d.dir, d.left, s.lo, s.hi)
					}
				}
			}
		})
	}

	t.Run("UDP", func(t *testing.T) {
		f := load(t)
		f.lbService(1, nodeIP, fe, 17, lbFlagNodePort, netip.AddrPortFrom(netip.AddrFrom4([4]byte(remote)), be))
		const sport = 40001
		var nsport uint16
		for i, s := range []step{
			{"a datagram with no reply", false, natSeg{}, 0, new_},
			{"a second datagram with no reply", false, natSeg{}, 0, new_},
			{"the backend's reply", true, natSeg{}, 0, new_},
			{"the client's next datagram", false, natSeg{}, 300*time.Second - slack, 300 * time.Second},
		} {
			if s.backend {
				f.run(f.objs.FromNetdev, udp(t, remote, nodeIP, be, nsport))
			} else {
				f.run(f.objs.FromNetdev, udp(t, peerIP, nodeIP, sport, fe))
			}
			if i == 0 {
				nsport = htons(f.reverseNAT().Dport)
			}
			fwd, rev := f.natLife(peerIP, sport)
			if fwd <= s.lo || fwd > s.hi || rev <= s.lo || rev > s.hi {
				t.Fatalf("after %s: the entries live %v and %v more, want (%v, %v]", s.what, fwd, rev, s.lo, s.hi)
			}
		}
	})
}

// Half a translation translates nothing. The attack: a client keeps its
// flow's forward entry alive with packets the backend never answers (RSTs
// of a closed flow) until the reverse entry expires and its SNAT port is
// taken by another client's flow; the stale forward entry then sent the
// attacker's packets into that flow as if from the victim. Each entry now
// counts only with its other direction's entry live and pointing back at
// it: here the reverse entry is gone, then belongs to another client.
func TestNodePortNATHalfFlowTranslatesNothing(t *testing.T) {
	nodeIP := net.IPv4(192, 168, 7, 1).To4()
	remote := net.IPv4(10, 9, 9, 9).To4()
	victim := net.IPv4(192, 168, 7, 66).To4()
	const fe, be, sport = 30090, 8080, 40000
	backendRoute(t, remote)
	f := load(t)
	f.lbService(1, nodeIP, fe, 6, lbFlagNodePort, netip.AddrPortFrom(netip.AddrFrom4([4]byte(remote)), be))
	f.run(f.objs.FromNetdev, tcp(t, peerIP, nodeIP, sport, fe, true, false))
	rk := f.reverseNAT()
	m, rv := f.natEntry(rk)
	// The client's segment leaves for the backend while the translation
	// is whole, and is left to the node's stack (not rewritten) once half
	// of it is gone or taken.
	send := func(what string, translated bool) {
		t.Helper()
		_, out := f.runOut(f.objs.FromNetdev, tcp(t, peerIP, nodeIP, sport, fe, false, true))
		dst, port := destination(t, out)
		if got := dst.Equal(remote) && port == be; got != translated {
			t.Fatalf("%s: the client's segment left for %s:%d; translated to the backend: %v, want %v", what, dst, port, got, translated)
		}
	}
	send("the translation whole", true)
	f.natDelete(rk)
	send("the reverse entry gone", false)
	taken := rv
	taken.Daddr, taken.Dport = ip4(victim), htons(50000) // another client's flow on the same SNAT port
	if err := m.Put(&rk, &taken); err != nil {
		t.Fatal(err)
	}
	send("the reverse entry another client's", false)
	if err := m.Put(&rk, &rv); err != nil {
		t.Fatal(err)
	}
	send("the reverse entry back", true)
}

// A local backend sees the client's own tuple (DNAT only), so two
// frontends reached from one client port collide there. A SYN to the
// second frontend took the first flow's reverse entry, and that flow's
// replies went out as the second frontend's; now it is refused (no free
// tuple) while the first lives. The same frontend's SYN again (a
// retransmission) still replaces its own entry.
func TestNodePortLocalBackendTupleNotTaken(t *testing.T) {
	nodeIP := net.IPv4(192, 168, 7, 1).To4()
	backend := netip.AddrPortFrom(netip.AddrFrom4([4]byte(podIP)), 8080)
	const reasonLBNat = 10
	f := load(t)
	f.lbService(1, nodeIP, 30090, 6, lbFlagNodePort, backend)
	f.lbService(2, nodeIP, 30091, 6, lbFlagNodePort, backend)
	frontendOfReply := func() uint16 {
		t.Helper()
		_, v := f.natEntry(DatapathLbNatKey{Saddr: ip4(podIP), Daddr: ip4(peerIP), Sport: htons(8080), Dport: htons(40000), Proto: 6})
		return htons(v.Sport)
	}
	f.translated("the SYN to the first frontend", tcp(t, peerIP, nodeIP, 40000, 30090, true, false), backend)
	before := f.count(reasonLBNat, dirIngress)
	// The forward entry gone (as if expired), the same SYN is a new flow
	// whose reverse tuple the first one's entry still holds.
	fk := DatapathLbNatKey{Saddr: ip4(peerIP), Daddr: ip4(nodeIP), Sport: htons(40000), Dport: htons(30090), Proto: 6}
	f.natDelete(fk)
	f.translated("the same SYN again", tcp(t, peerIP, nodeIP, 40000, 30090, true, false), backend)
	if got := f.count(reasonLBNat, dirIngress) - before; got != 0 || frontendOfReply() != 30090 {
		t.Fatalf("a retransmitted SYN: %d no-free-tuple drops, replies as frontend %d; want 0 and 30090", got, frontendOfReply())
	}
	f.run(f.objs.FromNetdev, tcp(t, peerIP, nodeIP, 40000, 30091, true, false))
	if got := f.count(reasonLBNat, dirIngress) - before; got != 1 || frontendOfReply() != 30090 {
		t.Fatalf("a SYN to the second frontend from the same client port: %d no-free-tuple drops, the first flow's replies go out as frontend %d; want 1 drop and 30090", got, frontendOfReply())
	}
}

// The addresses of the reply-path tests: this node, its gateway (the
// WireGuard SNAT address), a remote pod and its node.
var (
	replyNodeIP      = net.IPv4(192, 168, 7, 1).To4()
	replyGateway     = net.IPv4(10, 200, 1, 1).To4()
	replyRemotePod   = net.IPv4(10, 9, 1, 5).To4()
	replyBackendNode = net.IPv4(172, 30, 0, 9).To4()
)

// natUDPFlow loads the datapath with cfg, a remote pod remotePod on the
// WireGuard peer and tunnel node backendNode, a UDP NodePort frontend
// nodeIP:fe to backend:be, and sends the client's first datagram (from
// peerIP:sport) through from_netdev.
func natUDPFlow(t *testing.T, cfg DatapathNodeConfig, nodeIP, remotePod, backendNode, backend net.IP, fe, be, sport uint16) *fixture {
	t.Helper()
	f := load(t)
	putConfig(t, f.objs.Config, cfg)
	ik := DatapathIpcacheKey{Prefixlen: 32, Ip: ip4(remotePod)}
	if err := f.objs.Ipcache.Put(&ik, &DatapathIpcacheValue{Identity: peerID, TunnelIp: ip4(backendNode)}); err != nil {
		t.Fatal(err)
	}
	nk, one := ip4(backendNode), uint32(1)
	if err := f.objs.EncryptPeers.Put(&nk, &one); err != nil {
		t.Fatal(err)
	}
	if err := f.objs.Nodes.Put(&nk, &one); err != nil {
		t.Fatal(err)
	}
	f.lbService(1, nodeIP, fe, 17, lbFlagNodePort, netip.AddrPortFrom(netip.AddrFrom4([4]byte(backend)), be))
	f.run(f.objs.FromNetdev, udp(t, peerIP, nodeIP, sport, fe))
	return f
}

// A backend's replies are taken only the way they come: a local
// backend's from its veth (from_container), a WireGuard peer's backend's,
// translated from the node's gateway address, through the WireGuard
// device; the others' from the underlay (native routing, and the tunnel,
// whose backend's node routes them to this node's address). The attack:
// from the underlay, in the clear, a datagram with the backend's address
// to the translated tuple was translated back and sent to the client as
// the service's answer (for UDP, say DNS, nothing else stood in the way),
// with WireGuard on or a backend on this node. Now it is dropped as a
// forged source and moves nothing.
func TestNodePortRepliesOnlyTheirWay(t *testing.T) {
	nodeIP, gateway, remotePod, backendNode := replyNodeIP, replyGateway, replyRemotePod, replyBackendNode
	const fe, be, sport = 30090, 8080, 40000
	const reasonForgedSource = 15
	for _, c := range []struct {
		name    string
		cfg     DatapathNodeConfig
		backend net.IP
		forged  bool
	}{
		{"native", DatapathNodeConfig{}, remotePod, false},
		{"tunnel", DatapathNodeConfig{VxlanIfindex: 7}, remotePod, false},
		{"WireGuard", DatapathNodeConfig{Encrypt: 1, WireguardPort: wgPort, EncryptSnat: ip4(gateway)}, remotePod, true},
		{"a backend on this node", DatapathNodeConfig{}, podIP, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := natUDPFlow(t, c.cfg, nodeIP, remotePod, backendNode, c.backend, fe, be, sport)
			rk := f.reverseNAT()
			to := net.IP(binary.NativeEndian.AppendUint32(nil, rk.Daddr))
			if wg := c.cfg.EncryptSnat != 0; wg != to.Equal(gateway) {
				t.Fatalf("translated from %s, want the gateway %s only with WireGuard", to, gateway)
			}
			before := f.count(reasonForgedSource, dirIngress)
			ret, out := f.runOut(f.objs.FromNetdev, udp(t, c.backend, to, be, htons(rk.Dport)))
			dst, port := destination(t, out)
			translated := dst.Equal(peerIP) && port == sport && !c.backend.Equal(podIP) || c.backend.Equal(podIP) && ret != actShot
			dropped := f.count(reasonForgedSource, dirIngress) - before
			if c.forged && (ret != actShot || translated || dropped != 1) {
				t.Fatalf("a reply from the underlay: verdict %d, left for %s:%d, %d forged-source drops; want dropped as forged, not translated", ret, dst, port, dropped)
			}
			if !c.forged && (!translated || dropped != 0) {
				t.Fatalf("a reply from the underlay: left for %s:%d, %d forged-source drops; want translated to the client %s:%d", dst, port, dropped, peerIP, sport)
			}
			if fwd, rev := f.natLife(peerIP, sport); c.forged && (fwd > 60*time.Second || rev > 60*time.Second) {
				t.Fatalf("the forged reply moved the flow: its entries live %v and %v more, want at most 60 s (no reply seen)", fwd, rev)
			}
		})
	}
}

// TestNodePortRepliesOnlyTheirWay through the two other ways in: the
// VXLAN device (from_overlay, which takes what the underlay does) and the
// WireGuard device (from_wireguard, which takes what the underlay and a
// WireGuard peer's backend send, authenticated). A local backend's tuple
// never comes through either, nor a WireGuard peer's backend's through
// the clear overlay: such a reply is dropped as a forged source and moves
// nothing.
func TestNodePortRepliesOnlyTheirWayTunnelledOrEncrypted(t *testing.T) {
	nodeIP, gateway, remotePod, backendNode := replyNodeIP, replyGateway, replyRemotePod, replyBackendNode
	const fe, be, sport = 30090, 8080, 40000
	const reasonForgedSource = 15
	tunnel := DatapathNodeConfig{VxlanIfindex: 7}
	wg := DatapathNodeConfig{Encrypt: 1, WireguardPort: wgPort, EncryptSnat: ip4(gateway), VxlanIfindex: 7}
	for _, c := range []struct {
		name    string
		cfg     DatapathNodeConfig
		backend net.IP
		via     string // "overlay" or "wireguard"
		forged  bool
	}{
		{"a remote backend's reply through the overlay", tunnel, remotePod, "overlay", false},
		{"a WireGuard peer's backend's reply through the clear overlay", wg, remotePod, "overlay", true},
		{"a local backend's tuple through the overlay", tunnel, podIP, "overlay", true},
		{"a WireGuard peer's backend's reply through WireGuard", wg, remotePod, "wireguard", false},
		{"a local backend's tuple through WireGuard", wg, podIP, "wireguard", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := natUDPFlow(t, c.cfg, nodeIP, remotePod, backendNode, c.backend, fe, be, sport)
			rk := f.reverseNAT()
			from := net.IP(binary.NativeEndian.AppendUint32(nil, rk.Saddr))
			to := net.IP(binary.NativeEndian.AppendUint32(nil, rk.Daddr))
			if !from.Equal(c.backend) {
				t.Fatalf("the reverse translation is from %s, want the backend %s", from, c.backend)
			}
			reply := udp(t, from, to, be, htons(rk.Dport))
			before := f.count(reasonForgedSource, dirIngress)
			var ret uint32
			switch c.via {
			case "overlay":
				x := &fuzzFixture{objs: f.objs}
				x.overlayRunner(t)
				var p [8]byte
				binary.NativeEndian.PutUint32(p[:], binary.BigEndian.Uint32(backendNode))
				binary.NativeEndian.PutUint32(p[4:], peerID)
				if err := x.params.Put(uint32(0), p[:]); err != nil {
					t.Fatal(err)
				}
				var err error
				if ret, err = x.overlay.Run(&ebpf.RunOptions{Data: reply}); err != nil {
					t.Fatal(err)
				}
				if ret >= 97 && ret <= 99 {
					t.Fatalf("the overlay runner did not reach from_overlay: %d", ret)
				}
			case "wireguard":
				ret = f.run(f.objs.FromWireguard, reply[14:]) // a layer 3 device: no MAC header
			}
			dropped := f.count(reasonForgedSource, dirIngress) - before
			if c.forged && (ret != actShot || dropped != 1) {
				t.Fatalf("verdict %d, %d forged-source drops; want dropped as forged", ret, dropped)
			}
			if !c.forged && dropped != 0 {
				t.Fatalf("verdict %d, %d forged-source drops; want none", ret, dropped)
			}
			// The client's next datagram: after a reply the flow lives 5 min,
			// after none 60 s.
			f.run(f.objs.FromNetdev, udp(t, peerIP, nodeIP, sport, fe))
			fwd, rev := f.natLife(peerIP, sport)
			if replied := fwd > 60*time.Second && rev > 60*time.Second; replied == c.forged {
				t.Fatalf("after the client's next datagram the entries live %v and %v more: the reply counted %v, want %v", fwd, rev, replied, !c.forged)
			}
		})
	}
}

// A flow to a backend on this node moves through its states with the
// backend's packets seen at from_container (its replies' only way) and
// the client's at from_netdev: established after the handshake, closing
// after both FINs.
func TestNodePortLocalBackendLifetime(t *testing.T) {
	nodeIP := net.IPv4(192, 168, 7, 1).To4()
	const fe, be, sport = 30090, 8080, 40000
	f := load(t)
	f.rule(dirEgress, peerID, 6, sport, 24, false) // the pod's egress admits its replies
	f.lbService(1, nodeIP, fe, 6, lbFlagNodePort, netip.AddrPortFrom(netip.AddrFrom4([4]byte(podIP)), be))
	for i, s := range []struct {
		what    string
		backend bool
		flags   func(*layers.TCP)
		lo, hi  time.Duration
	}{
		{"the client's SYN", false, func(l *layers.TCP) { l.Seq, l.SYN = 1000, true }, 0, time.Minute},
		{"the backend's SYN-ACK", true, func(l *layers.TCP) { l.Seq, l.Ack, l.SYN, l.ACK = 5000, 1001, true, true }, 0, time.Minute},
		{"the client's ACK", false, func(l *layers.TCP) { l.Seq, l.Ack, l.ACK = 1001, 5001, true }, 6*time.Hour - 2*time.Second, 6 * time.Hour},
		{"the backend's FIN", true, func(l *layers.TCP) { l.Seq, l.Ack, l.FIN, l.ACK = 5001, 1001, true, true }, 6*time.Hour - 2*time.Second, 6 * time.Hour},
		{"the client's FIN", false, func(l *layers.TCP) { l.Seq, l.Ack, l.FIN, l.ACK = 1001, 5002, true, true }, 0, 10 * time.Second},
	} {
		if s.backend {
			// Translated back to the frontend (the verdict is the FIB's of
			// the test run).
			_, out := f.runOut(f.objs.FromContainer, tcpWith(t, podIP, peerIP, be, sport, s.flags))
			if src, port := net.IP(out[14+12:14+16]), binary.BigEndian.Uint16(out[14+20:]); !src.Equal(nodeIP) || port != fe {
				t.Fatalf("%s: left from_container from %s:%d, want translated to the frontend %s:%d", s.what, src, port, nodeIP, fe)
			}
		} else {
			f.run(f.objs.FromNetdev, tcpWith(t, peerIP, nodeIP, sport, fe, s.flags))
		}
		fwd, rev := f.natLife(peerIP, sport)
		if fwd <= s.lo || fwd > s.hi || rev <= s.lo || rev > s.hi {
			t.Fatalf("after %s (step %d): the entries live %v and %v more, want (%v, %v]", s.what, i, fwd, rev, s.lo, s.hi)
		}
	}
}

// affinityNodePort makes NodePort nodeIP:30090/tcp, service 1, with
// ClientIP affinity (600 s) to the pod's port 8080.
func (f *fixture) affinityNodePort(nodeIP net.IP) {
	f.t.Helper()
	f.lbService(1, nodeIP, 30090, 6, lbFlagNodePort|1 /* affinity */, netip.AddrPortFrom(netip.AddrFrom4([4]byte(podIP)), 8080))
	var sv DatapathLbService
	sk := DatapathLbKey{Vip: ip4(nodeIP), Port: htons(30090), Proto: 6}
	if err := f.objs.LbServices.Lookup(&sk, &sv); err != nil {
		f.t.Fatal(err)
	}
	sv.AffinityTimeout = 600
	if err := f.objs.LbServices.Put(&sk, &sv); err != nil {
		f.t.Fatal(err)
	}
}

// NodePort affinity (by client address, at tc) and socket affinity (by
// netns cookie) shared lb_affinities (until 2026-12-07); an address a.b.0.0 is the number of a
// small cookie. The attack: a SYN from such an address to a NodePort with
// ClientIP affinity that a pod's namespace also reaches set, or used,
// that namespace's affinity (spoofed, no reply needed). Keys now say which
// kind of client they name: the SYN leaves the namespace's entry as it was
// and makes one of its own.
func TestNodePortAffinityApartFromSockets(t *testing.T) {
	nodeIP := net.IPv4(192, 168, 7, 1).To4()
	f := load(t)
	f.affinityNodePort(nodeIP)
	client := net.IPv4(5, 0, 0, 0).To4() // as a key: cookie 5
	cookie := uint64(ip4(client))
	nsKey := DatapathLbAffinityKey{Client: cookie, Id: 1}
	nsVal := DatapathLbAffinity{LastUsed: 1, Backend: 7}
	if err := f.objs.LbAffinities.Put(&nsKey, &nsVal); err != nil {
		t.Fatal(err)
	}
	f.run(f.objs.FromNetdev, tcp(t, client, nodeIP, 40000, 30090, true, false))
	var got DatapathLbAffinity
	if err := f.objs.LbAffinities.Lookup(&nsKey, &got); err != nil || got != nsVal {
		t.Fatalf("the namespace's affinity after a NodePort SYN from %s: %+v (%v), want %+v untouched", client, got, err, nsVal)
	}
	netKey := DatapathLbAffinityKey{Client: cookie, Id: 1, Net: 1}
	if err := f.objs.LbAffinitiesNet.Lookup(&netKey, &got); err != nil || got.Backend != 1 {
		t.Fatalf("the NodePort client's own affinity: %+v (%v), want one to backend 1", got, err)
	}
}

// The attack, found 2026-12-07 by a hunt of shared state: a NodePort
// affinity is written at a client's first packet, before any handshake,
// so SYNs from spoofed addresses without end (to any NodePort with
// ClientIP affinity, a tenant's own among them) filled the one LRU table
// every client's affinity was in, and pushed the pods' out: their next
// connections went to freshly picked backends (broken sessions).
// Network clients' affinities have a table of their own now.
func TestNodePortAffinityFloodSparesSockets(t *testing.T) {
	nodeIP := net.IPv4(192, 168, 7, 1).To4()
	f := load(t)
	f.affinityNodePort(nodeIP)
	pod := DatapathLbAffinityKey{Client: 12345, Id: 2}
	podVal := DatapathLbAffinity{LastUsed: 1, Backend: 7}
	if err := f.objs.LbAffinities.Put(&pod, &podVal); err != nil {
		t.Fatal(err)
	}
	n := 2 * int(f.objs.LbAffinities.MaxEntries())
	for i := range n {
		src := net.IPv4(100, byte(64+i>>16), byte(i>>8), byte(i)).To4()
		f.run(f.objs.FromNetdev, tcp(t, src, nodeIP, 40000, 30090, true, false))
	}
	var got DatapathLbAffinity
	if err := f.objs.LbAffinities.Lookup(&pod, &got); err != nil {
		t.Fatalf("a pod's affinity after %d spoofed NodePort SYNs: %v, want kept", n, err)
	}
}

// Entries of an agent from before reverse entries recorded their replies'
// way (path 0 after an upgrade keeps the pinned map) are never taken as
// foreign: a local backend's live flow keeps being translated back.
func TestNodePortNATEntriesFromBeforePaths(t *testing.T) {
	nodeIP := net.IPv4(192, 168, 7, 1).To4()
	const fe, be, sport = 30090, 8080, 40000
	f := load(t)
	f.rule(dirEgress, peerID, 6, sport, 24, false)
	f.lbService(1, nodeIP, fe, 6, lbFlagNodePort, netip.AddrPortFrom(netip.AddrFrom4([4]byte(podIP)), be))
	f.run(f.objs.FromNetdev, tcp(t, peerIP, nodeIP, sport, fe, true, false))
	rk := f.reverseNAT()
	m, rv := f.natEntry(rk)
	rv.Path, rv.State = 0, 0 // as the old agent wrote it
	if err := m.Put(&rk, &rv); err != nil {
		t.Fatal(err)
	}
	_, out := f.runOut(f.objs.FromContainer, tcp(t, podIP, peerIP, be, sport, true, true))
	if src, port := net.IP(out[14+12:14+16]), binary.BigEndian.Uint16(out[14+20:]); !src.Equal(nodeIP) || port != fe {
		t.Fatalf("the backend's reply on an entry from before paths left from %s:%d, want translated to the frontend %s:%d", src, port, nodeIP, fe)
	}
}

// An RST closes an established translation only at exactly the number
// its receiver acknowledged last or the one after the last its sender sent. The attack: with RSTs from the backend's address
// to each of the node's 4,536 SNAT ports (the clear modes: the underlay
// carries the backend's replies), every translation to that backend went
// closing and an idle one was gone 10 s later; the endpoints themselves
// ignore such RSTs. Blind ones, and ones with the other side's numbers,
// now leave the flow established; the real one closes it, also where the
// sequence space wraps. The backend's refusal of a client's new connection
// on the tuple (an RST acknowledging its SYN) closes it.
func TestNodePortNATRSTNeedsItsSequence(t *testing.T) {
	nodeIP := net.IPv4(192, 168, 7, 1).To4()
	remote := net.IPv4(10, 9, 9, 9).To4()
	const fe, be, sport = 30090, 8080, 40000
	for _, c := range []struct {
		name                 string
		clientISN, serverISN uint32
	}{
		{"apart", 1000, 0x80000000},
		{"the client's numbers wrap", 0xffffff00, 0x7fffff00},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := load(t)
			client, backend := f.nodePortFlow(nodeIP, remote, fe, be, sport)
			life := f.natLifeIn(sport)
			est := 6*time.Hour - 2*time.Second
			cs, ss := c.clientISN+1, c.serverISN+1 // the next numbers each side sends
			natHandshake(client, backend, c.clientISN, c.serverISN)
			backend(natSeg{seq: ss, ack: cs, ackf: true})
			life("the handshake and the backend's data", est, 6*time.Hour)
			backend(natSeg{seq: ss + 1<<30, rst: true})
			life("a blind RST from the backend's address", est, 6*time.Hour)
			client(natSeg{seq: cs + 1<<31, rst: true})
			life("a blind RST from the client's address", est, 6*time.Hour)
			client(natSeg{seq: ss, rst: true})
			life("an RST from the client with the backend's number", est, 6*time.Hour)
			backend(natSeg{seq: cs, rst: true})
			life("an RST from the backend with the client's number", est, 6*time.Hour)
			client(natSeg{seq: cs, ack: ss, ackf: true, data: 0x200}) // not yet acknowledged; wraps in the second case
			client(natSeg{seq: cs + 0x1ff, rst: true})
			life("an RST one short of the client's next number", est, 6*time.Hour)
			client(natSeg{seq: cs + 0x201, rst: true})
			life("an RST one past the client's next number", est, 6*time.Hour)
			client(natSeg{seq: cs + 0x200, rst: true})
			life("the client's RST at its next number", 0, 10*time.Second)

			// The same client port again: established, then the backend
			// has lost the connection and refuses the next one.
			natHandshake(client, backend, c.clientISN+5000, c.serverISN+5000)
			life("the second connection established", est, 6*time.Hour)
			client(natSeg{seq: c.clientISN + 9000, syn: true})
			backend(natSeg{seq: 0, ack: c.clientISN + 9001, ackf: true, rst: true})
			life("the backend's refusing RST to a new connection on the tuple", 0, 10*time.Second)
		})
	}
}

// Real flows that the check of forged segments (lb_nat_tcp) must still
// close: FINs from both sides; an RST after the client acknowledged
// 3 MiB at once; the backend's RST after a stray ACK far ahead, its data
// and the real ACK; an RST after the backend took a new connection of the
// client's port.
func TestNodePortNATRealFlowsClose(t *testing.T) {
	nodeIP := net.IPv4(192, 168, 7, 1).To4()
	remote := net.IPv4(10, 9, 9, 9).To4()
	const fe, be, sport = 30090, 8080, 40000
	const clientISN, serverISN = 0xffffff00, 0x7fffff00 // the client's numbers wrap
	const mib = 1 << 20
	type side func(natSeg)
	for _, c := range []struct {
		name string
		run  func(client, backend side, cs, ss uint32)
	}{
		{"real FINs from both sides", func(client, backend side, cs, ss uint32) {
			// (A segment of a synchronised connection carries an ACK.)
			client(natSeg{seq: cs, ack: ss, ackf: true, fin: true})
			backend(natSeg{seq: ss, ack: cs + 1, ackf: true, fin: true})
		}},
		{"the backend sends 3 MiB, the client acknowledges it at once, the backend's RST", func(client, backend side, cs, ss uint32) {
			backend(natSeg{seq: ss + 3*mib - 100, ack: cs, ackf: true, data: 100})
			client(natSeg{seq: cs, ack: ss + 3*mib, ackf: true})
			backend(natSeg{seq: ss + 3*mib, rst: true})
		}},
		{"a stray ACK far ahead, real data and ACK, the backend's RST", func(client, backend side, cs, ss uint32) {
			client(natSeg{seq: cs, ack: ss + 1<<30, ackf: true})
			backend(natSeg{seq: ss, ack: cs, ackf: true, data: 1000})
			client(natSeg{seq: cs, ack: ss + 1000, ackf: true})
			backend(natSeg{seq: ss + 1000, rst: true})
		}},
		{"the backend takes a new connection of the client's port, then its RST", func(client, backend side, cs, ss uint32) {
			natHandshake(client, backend, 0x30000000, 0x50000000)
			backend(natSeg{seq: 0x50000001, rst: true})
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := load(t)
			client, backend := f.nodePortFlow(nodeIP, remote, fe, be, sport)
			cs, ss := uint32(clientISN+1), uint32(serverISN+1)
			natHandshake(client, backend, clientISN, serverISN)
			backend(natSeg{seq: ss, ack: cs, ackf: true})
			c.run(client, backend, cs, ss)
			fwd, rev := f.natLife(peerIP, sport)
			if fwd > 10*time.Second || rev > 10*time.Second {
				t.Fatalf("the entries live %v and %v more, want at most 10 s (closed)", fwd, rev)
			}
		})
	}
}

// A new flow that finds no free SNAT port takes over one held by a
// translation never established and idle for 5 s, as it does an expired
// one. The attack: unanswered SYNs from many source ports, about 76 a
// second, held every SNAT port of a remote backend for their 60 s. A UDP
// flow that was answered is never taken (its next answer, SIP's 200 OK
// after a silent ring say, would go to the new flow's client), nor an
// established one, idle or not.
func TestNodePortSNATIdleNewTakenOver(t *testing.T) {
	nodeIP := net.IPv4(192, 168, 7, 1).To4()
	remote := net.IPv4(10, 9, 9, 9).To4()
	for _, c := range []struct {
		name       string
		proto      uint8
		state      uint8
		idle       time.Duration // since the holders' last packet
		translated bool
	}{
		{"TCP new, idle 6 s", 6, 0, 6 * time.Second, true},
		{"TCP new, idle 4 s", 6, 0, 4 * time.Second, false},
		{"TCP replied to, idle 6 s", 6, 3, 6 * time.Second, true},
		{"TCP established, 50 s left", 6, 1, 6*time.Hour - 50*time.Second, false},
		{"UDP new, idle 6 s", 17, 0, 6 * time.Second, true},
		{"UDP new, idle 4 s", 17, 0, 4 * time.Second, false},
		{"UDP answered, idle 10 s", 17, 3, 10 * time.Second, false},
	} {
		// The holders in either table: lb_nats_new, where a new flow's
		// translation is, or lb_nats (an earlier agent's, or a flow
		// established and then opened again by a SYN).
		for _, table := range []string{"lb_nats_new", "lb_nats"} {
			t.Run(c.name+" in "+table, func(t *testing.T) {
				f := load(t)
				f.lbService(1, nodeIP, 30090, c.proto, lbFlagNodePort, netip.AddrPortFrom(netip.AddrFrom4([4]byte(remote)), 8080))
				timeout := 60 * time.Second
				if c.state == 1 {
					timeout = 6 * time.Hour
				}
				expires := monotonic(t) + uint64(timeout-c.idle)
				m := f.objs.LbNatsNew
				if table == "lb_nats" {
					m = f.objs.LbNats
				}
				translated, dropped := f.snatFull(m, nodeIP, remote, c.proto, DatapathLbNat{Expires: expires, State: c.state, Path: 1})
				if translated != c.translated || (dropped == 1) == c.translated {
					t.Fatalf("every SNAT port held (%s, in %s): translated %v, %d no-free-port drops; want translated %v", c.name, table, translated, dropped, c.translated)
				}
			})
		}
	}
}

// snatFull holds every SNAT port of a NodePort (nodeIP:30090, protocol
// proto) to remote:8080 with a reverse entry like held (its addresses and
// ports filled in) in table m, then sends a new flow from peerIP:40000 to it (the
// verdict is the FIB's of the test run) and returns whether it was
// translated and how many no-free-port drops it made.
func (f *fixture) snatFull(m *ebpf.Map, nodeIP, remote net.IP, proto uint8, held DatapathLbNat) (translated bool, dropped uint64) {
	t := f.t
	t.Helper()
	const reasonLBNat = 10
	for p := 61000; p <= 65535; p++ {
		k := DatapathLbNatKey{Saddr: ip4(remote), Daddr: ip4(nodeIP), Sport: htons(8080), Dport: htons(uint16(p)), Proto: proto}
		v := held
		v.Saddr, v.Daddr, v.Sport, v.Dport, v.Reverse = ip4(nodeIP), ip4(net.IPv4(192, 168, 7, 50)), htons(30090), htons(uint16(p)), 1
		if err := m.Put(&k, &v); err != nil {
			t.Fatal(err)
		}
	}
	before := f.count(reasonLBNat, dirIngress)
	pkt := udp(t, peerIP, nodeIP, 40000, 30090)
	if proto == 6 {
		pkt = tcp(t, peerIP, nodeIP, 40000, 30090, true, false)
	}
	f.run(f.objs.FromNetdev, pkt)
	f.natEach(func(_ *ebpf.Map, k DatapathLbNatKey, v DatapathLbNat) {
		if v.Reverse == 1 && v.Daddr == ip4(peerIP) && v.Dport == htons(40000) {
			translated = true
		}
	})
	return translated, f.count(reasonLBNat, dirIngress) - before
}

// natSeg is one TCP segment of a NodePort flow: its numbers, flags and
// payload size.
type natSeg struct {
	seq, ack            uint32
	syn, ackf, fin, rst bool
	data                int
}

// nodePortFlow makes nodeIP:fe a TCP NodePort whose one backend is
// remote:be and returns natPeers' senders of the flow of client port sport.
func (f *fixture) nodePortFlow(nodeIP, remote net.IP, fe, be, sport uint16) (client, backend func(natSeg)) {
	f.lbService(1, nodeIP, fe, 6, lbFlagNodePort, netip.AddrPortFrom(netip.AddrFrom4([4]byte(remote)), be))
	return natPeers(f, nodeIP, remote, fe, be, sport)
}

// natHandshake opens a connection on a NodePort flow: the client's SYN at
// cISN, the backend's SYN-ACK at sISN, the client's ACK of it.
func natHandshake(client, backend func(natSeg), cISN, sISN uint32) {
	client(natSeg{seq: cISN, syn: true})
	backend(natSeg{seq: sISN, ack: cISN + 1, syn: true, ackf: true})
	client(natSeg{seq: cISN + 1, ack: sISN + 1, ackf: true})
}

// natPeers returns senders of segments of one NodePort flow through
// from_netdev: the client's (from peerIP:sport to the frontend nodeIP:fe)
// and the backend's (from remote:be to the SNAT port the client's first
// segment got).
func natPeers(f *fixture, nodeIP, remote net.IP, fe, be, sport uint16) (client, backend func(natSeg)) {
	var nsport uint16
	send := func(src, dst net.IP, sp, dp uint16, s natSeg) {
		ip := ipv4(src, dst, layers.IPProtocolTCP)
		l4 := &layers.TCP{SrcPort: layers.TCPPort(sp), DstPort: layers.TCPPort(dp), Seq: s.seq, Ack: s.ack,
			SYN: s.syn, ACK: s.ackf, FIN: s.fin, RST: s.rst, Window: 1000}
		l4.SetNetworkLayerForChecksum(ip)
		f.run(f.objs.FromNetdev, serialize(f.t, eth(), ip, l4, gopacket.Payload(make([]byte, s.data))))
	}
	client = func(s natSeg) {
		send(peerIP, nodeIP, sport, fe, s)
		if nsport == 0 {
			nsport = htons(f.reverseNAT().Dport)
		}
	}
	backend = func(s natSeg) { send(remote, nodeIP, be, nsport, s) }
	return client, backend
}

// Segments forged from a NodePort client's address and port (known to an
// attacker who sees or guesses them), and from the backend's address to
// this node's SNAT ports, leave an established translation established:
// only the flow's own numbers close it. The attacks, each of which closed
// the flow (10 s later its translation was gone and the connection with
// it): an ACK from the client's tuple acknowledging a number of the
// attacker's choice, then an RST from the backend's address at that
// number; a SYN from the client's tuple (which cleared the numbers the
// RST check compared with), then an RST at any number; FINs from both
// sides at any numbers; a SYN, then the backend's refusing RST (the real
// backend still holds the connection and answers the SYN with an ACK of
// its numbers); a SYN, the backend's ACK, a forged SYN-ACK and the
// client's ACK of it (a new connection on the tuple, as if the backend
// had lost the old one), then an RST at those numbers; a segment without
// ACK (which no side of a synchronised connection sends) inside the
// window, which moved its side's end to the forger's number, then an RST
// there (found 2026-12-06 by reading). After each the flow's real FINs
// still close it.
func TestNodePortNATForgedSegmentsLeaveFlowsOpen(t *testing.T) {
	nodeIP := net.IPv4(192, 168, 7, 1).To4()
	remote := net.IPv4(10, 9, 9, 9).To4()
	const fe, be, sport = 30090, 8080, 40000
	const clientISN, serverISN = 0xffffff00, 0x7fffff00 // the client's numbers wrap
	cs, ss := uint32(clientISN+1), uint32(serverISN+1)
	// After the handshake the client sends 100 bytes and the backend 200.
	cEnd, sEnd := cs+100, ss+200
	for _, c := range []struct {
		name string
		run  func(client, backend func(natSeg))
	}{
		{"an ACK of the attacker's number, an RST from the backend's address at it", func(client, backend func(natSeg)) {
			x := ss + 0x12345678
			client(natSeg{seq: cEnd, ack: x, ackf: true})
			backend(natSeg{seq: x, rst: true})
			backend(natSeg{seq: x, ack: cEnd, ackf: true, rst: true})
		}},
		{"segments without ACK inside the window, an RST at their end", func(client, backend func(natSeg)) {
			// A blind forger's lucky guesses (about one in 64 falls in the
			// window): a segment that carries no ACK skipped the check of
			// its acknowledgement and moved its side's end to a number
			// the forger chose.
			client(natSeg{seq: cEnd + 1000, data: 10})
			client(natSeg{seq: cEnd + 1010, rst: true})
			backend(natSeg{seq: sEnd + 1000, data: 10})
			backend(natSeg{seq: sEnd + 1010, rst: true})
		}},
		{"a SYN from the client's tuple, RSTs at any number", func(client, backend func(natSeg)) {
			client(natSeg{seq: 777, syn: true})
			client(natSeg{seq: 0, rst: true})
			client(natSeg{seq: 778, rst: true})
			backend(natSeg{seq: 0, rst: true})
		}},
		{"FINs from both sides", func(client, backend func(natSeg)) {
			client(natSeg{seq: cEnd + 1<<20, ack: sEnd + 1<<20, ackf: true, fin: true})
			backend(natSeg{seq: sEnd + 1<<29, ack: cEnd, ackf: true, fin: true})
			client(natSeg{seq: 5, fin: true})
			backend(natSeg{seq: 5, fin: true})
		}},
		{"a SYN, the backend's ACK, a refusing RST", func(client, backend func(natSeg)) {
			client(natSeg{seq: 777, syn: true})
			backend(natSeg{seq: sEnd, ack: cEnd, ackf: true}) // what the real backend answers
			backend(natSeg{seq: 0, ack: 778, ackf: true, rst: true})
		}},
		{"a SYN, the backend's ACK, a forged handshake, an RST at its numbers", func(client, backend func(natSeg)) {
			client(natSeg{seq: 777, syn: true})
			backend(natSeg{seq: sEnd, ack: cEnd, ackf: true})
			backend(natSeg{seq: 5000, ack: 778, syn: true, ackf: true})
			client(natSeg{seq: 778, ack: 5001, ackf: true})
			client(natSeg{seq: 778, rst: true})
			backend(natSeg{seq: 5001, rst: true})
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := load(t)
			client, backend := f.nodePortFlow(nodeIP, remote, fe, be, sport)
			life := f.natLifeIn(sport)
			est := 6*time.Hour - 2*time.Second
			natHandshake(client, backend, clientISN, serverISN)
			client(natSeg{seq: cs, ack: ss, ackf: true, data: 100})
			backend(natSeg{seq: ss, ack: cEnd, ackf: true, data: 200})
			client(natSeg{seq: cEnd, ack: sEnd, ackf: true})
			life("the handshake and data both ways", est, 6*time.Hour)
			c.run(client, backend)
			life(c.name, est, 6*time.Hour)
			client(natSeg{seq: cEnd, ack: sEnd, ackf: true, fin: true})
			backend(natSeg{seq: sEnd, ack: cEnd + 1, ackf: true, fin: true})
			client(natSeg{seq: cEnd + 1, ack: sEnd + 1, ackf: true})
			life("the real FINs", 0, 10*time.Second)
		})
	}
}

// An established translation of an agent from before the flows' numbers
// were kept (after an upgrade: flags without LB_NAT_SEQ_*, acked what the
// older agent kept) stays established through RSTs at other numbers, takes
// each side's numbers from its next segment, and closes with its real
// FINs; an RST at the number the older agent kept closes it too.
func TestNodePortNATEntriesFromBeforeNumbers(t *testing.T) {
	nodeIP := net.IPv4(192, 168, 7, 1).To4()
	remote := net.IPv4(10, 9, 9, 9).To4()
	const fe, be, sport = 30090, 8080, 40000
	for _, closeWithRST := range []bool{false, true} {
		f := load(t)
		client, backend := f.nodePortFlow(nodeIP, remote, fe, be, sport)
		natHandshake(client, backend, 1000, 5000)
		// As the older agent left them: 300 bytes of the client's and 500
		// of the backend's acknowledged since.
		f.natEach(func(m *ebpf.Map, k DatapathLbNatKey, v DatapathLbNat) {
			v.Flags, v.End, v.Resync = 0, 0, 0
			v.Acked = 1301
			if v.Reverse == 1 {
				v.Acked = 5501
			}
			if err := m.Put(&k, &v); err != nil {
				t.Fatal(err)
			}
		})
		life := f.natLifeIn(sport)
		est := 6*time.Hour - 2*time.Second
		client(natSeg{seq: 0x12345678, rst: true})
		backend(natSeg{seq: 0x9abcdef0, rst: true})
		life("blind RSTs on an older agent's translation", est, 6*time.Hour)
		if closeWithRST {
			backend(natSeg{seq: 5501, rst: true})
			life("the backend's RST at what the older agent kept", 0, 10*time.Second)
			continue
		}
		backend(natSeg{seq: 5501, ack: 1301, ackf: true, data: 100})
		client(natSeg{seq: 1301, ack: 5601, ackf: true})
		client(natSeg{seq: 0x12345678, rst: true})
		life("a blind RST once the numbers are known", est, 6*time.Hour)
		client(natSeg{seq: 1301, ack: 5601, ackf: true, fin: true})
		backend(natSeg{seq: 5601, ack: 1302, ackf: true, fin: true})
		life("the real FINs", 0, 10*time.Second)
	}
}
