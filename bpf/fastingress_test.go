package bpf

import (
	"math/bits"
	"net"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket/layers"
)

// to_container's fast path (lib/fastpath.h, fast_ingress): an established
// packet the kernel routes to a pod passes after one conntrack lookup when
// its entry's policy was checked at the current datapath revision. Which
// path a packet took shows in its entry: the slow path (enforce) sets the
// expiry on every packet it forwards, the fast path leaves it, so a test
// writes a marker expiry and reads it back.

const (
	reasonProxyBypass = 14
	markerExpiry      = uint64(1) << 62 // far in the future: a live entry
)

// ingressProbe is an established flow into the pod (peerIP:50000 ->
// podIP:80, allowed by an ingress rule) or out of it (podIP:40000 ->
// peerIP:80, allowed by an egress rule; the packets in are its replies).
type ingressProbe struct {
	f            *fixture
	in           []byte // an established packet to the pod
	src, dst     net.IP
	sport, dport uint16
	dir          uint8
	proto        uint8 // 6 when unset
}

// accepted opens a connection the pod accepts, to the ACK that establishes it.
func accepted(t *testing.T, f *fixture) *ingressProbe {
	f.rule(dirIngress, peerID, 6, 80, 24, false)
	if r := f.run(f.objs.ToContainer, tcp(t, peerIP, podIP, 50000, 80, true, false)); r != actOK {
		t.Fatalf("SYN in: %d", r)
	}
	if r := f.run(f.objs.FromContainer, tcp(t, podIP, peerIP, 80, 50000, true, true)); r != actOK {
		t.Fatalf("SYN-ACK out: %d", r)
	}
	p := &ingressProbe{f: f, in: tcp(t, peerIP, podIP, 50000, 80, false, true), src: peerIP, dst: podIP, sport: 50000, dport: 80, dir: dirIngress}
	if r := f.run(f.objs.ToContainer, p.in); r != actOK {
		t.Fatalf("ACK in: %d", r)
	}
	return p
}

// opened opens a connection from the pod, to its first reply and the ACK.
func opened(t *testing.T, f *fixture) *ingressProbe {
	f.rule(dirEgress, peerID, 6, 80, 24, false)
	if r := f.run(f.objs.FromContainer, tcp(t, podIP, peerIP, 40000, 80, true, false)); r != actOK {
		t.Fatalf("SYN out: %d", r)
	}
	if r := f.run(f.objs.ToContainer, tcp(t, peerIP, podIP, 80, 40000, true, true)); r != actOK {
		t.Fatalf("SYN-ACK in: %d", r)
	}
	if r := f.run(f.objs.FromContainer, tcp(t, podIP, peerIP, 40000, 80, false, true)); r != actOK {
		t.Fatalf("ACK out: %d", r)
	}
	return &ingressProbe{f: f, in: tcp(t, peerIP, podIP, 80, 40000, false, true), src: podIP, dst: peerIP, sport: 40000, dport: 80, dir: dirEgress}
}

func (p *ingressProbe) l4() uint8 {
	if p.proto == 0 {
		return 6
	}
	return p.proto
}

func (p *ingressProbe) key() DatapathCtKey {
	return DatapathCtKey{Saddr: ip4(p.src), Daddr: ip4(p.dst), Sport: htons(p.sport), Dport: htons(p.dport), Proto: p.l4(), Dir: p.dir, EpId: podEP}
}

func (p *ingressProbe) entry() DatapathCtEntry {
	return p.f.ctEntry(p.src, p.dst, p.sport, p.dport, p.l4(), p.dir, podEP)
}

// edit rewrites the flow's entry.
func (p *ingressProbe) edit(change func(*DatapathCtEntry)) {
	p.f.t.Helper()
	e := p.entry()
	change(&e)
	k := p.key()
	if err := p.f.ctMap(k).Put(&k, &e); err != nil {
		p.f.t.Fatal(err)
	}
}

// send runs to_container on the established packet (with ctx when not
// nil) and tells its verdict and whether the fast path took it (the
// marker expiry stayed).
func (p *ingressProbe) send(ctx any) (uint32, bool) {
	p.f.t.Helper()
	p.edit(func(e *DatapathCtEntry) {
		if e.Expires != 0 {
			e.Expires = markerExpiry
		}
	})
	before := p.entry().Packets
	opts := &ebpf.RunOptions{Data: p.in}
	if ctx != nil {
		opts.Context = ctx
	}
	ret, err := p.f.objs.ToContainer.Run(opts)
	if err != nil {
		p.f.t.Fatalf("test run: %v", err)
	}
	e := p.entry()
	if ret == actOK && e.Packets != before+1 {
		p.f.t.Fatalf("forwarded but not counted in its entry: %d packets, was %d", e.Packets, before)
	}
	return ret, e.Expires == markerExpiry
}

// dropped sends the established packet and checks to_container drops it
// for reason.
func (p *ingressProbe) dropped(what string, reason uint32) {
	p.f.t.Helper()
	n := p.f.count(reason, dirIngress)
	if r, _ := p.send(nil); r != actShot || p.f.count(reason, dirIngress) != n+1 {
		p.f.t.Fatalf("%s: verdict %d, drops for reason %d: %d (want %d)", what, r, reason, p.f.count(reason, dirIngress), n+1)
	}
}

func TestToContainerFastPath(t *testing.T) {
	for _, c := range []struct {
		name string
		open func(*testing.T, *fixture) *ingressProbe
	}{{"accepted", accepted}, {"opened", opened}} {
		t.Run(c.name, func(t *testing.T) {
			f := load(t)
			p := c.open(t, f)
			if r, fast := p.send(nil); r != actOK || !fast {
				t.Fatalf("established packet: verdict %d, fast path %v", r, fast)
			}
			// The allow goes: the entry's check stands until the agent
			// bumps the revision, then the next packet is checked again
			// and dropped (in the flow's own direction).
			dir := uint8(dirIngress)
			if c.name == "opened" {
				dir = dirEgress
			}
			f.deleteRule(dir, peerID, 6, 80, 24)
			if r, fast := p.send(nil); r != actOK || !fast {
				t.Fatalf("before the bump: verdict %d, fast path %v", r, fast)
			}
			f.bump()
			// (Counted where to_container drops: at the pod's ingress.)
			denied := f.count(reasonDenied, dirIngress)
			if r, fast := p.send(nil); r != actShot || fast || f.count(reasonDenied, dirIngress) != denied+1 {
				t.Fatalf("after the allow went and the bump: verdict %d, fast path %v, default-deny drops %d (want %d)",
					r, fast, f.count(reasonDenied, dirIngress), denied+1)
			}
			// Revoked: its entry ended; allowed again at a later revision,
			// the old flow is not let back in by either path.
			f.rule(dir, peerID, 6, 80, 24, false)
			f.bump()
			if r, _ := p.send(nil); r != actShot {
				t.Fatalf("the revoked flow, allowed again: verdict %d, want dropped", r)
			}
		})
	}
}

// What the fast path leaves to the slow one.
func TestToContainerFastPathExceptions(t *testing.T) {
	t.Run("new revision", func(t *testing.T) {
		f := load(t)
		p := accepted(t, f)
		f.bump()
		if r, fast := p.send(nil); r != actOK || fast {
			t.Fatalf("first packet after a bump: verdict %d, fast path %v (want the slow path's re-check)", r, fast)
		}
		if r, fast := p.send(nil); r != actOK || !fast {
			t.Fatalf("the next one: verdict %d, fast path %v", r, fast)
		}
	})
	t.Run("expiry due", func(t *testing.T) {
		f := load(t)
		p := accepted(t, f)
		p.edit(func(e *DatapathCtEntry) { e.Refreshed = 0 })
		if r, fast := p.send(nil); r != actOK || fast {
			t.Fatalf("entry refreshed long ago: verdict %d, fast path %v", r, fast)
		}
		if r, fast := p.send(nil); r != actOK || !fast {
			t.Fatalf("refreshed by the slow path, the next packet: verdict %d, fast path %v", r, fast)
		}
	})
	t.Run("ended entry", func(t *testing.T) {
		// An entry a revocation ended (expiry 0) is never live, whatever
		// its revision says (the 32-bit counter may come round again).
		f := load(t)
		p := accepted(t, f)
		p.edit(func(e *DatapathCtEntry) { e.Expires = 0 })
		p.dropped("packet of an ended entry at its revision", reasonCTMissing)
	})
	t.Run("state changes", func(t *testing.T) {
		f := load(t)
		p := accepted(t, f)
		// The peer's FIN at the number the pod expects next (one from
		// outside counts only there: ct_fin_counts).
		next := bits.ReverseBytes32(p.entry().Isn) // network order
		fin := tcpData(t, peerIP, podIP, 50000, 80, next, 1, 0, true)
		if r := f.run(f.objs.ToContainer, fin); r != actOK {
			t.Fatalf("FIN in: %d", r)
		}
		// The slow path's ct_update saw it: one side closed
		// (TestHalfClosedConnectionKeepsItsEntry), then the other.
		if e := p.entry(); e.Fin&3 != 1 || e.State == 2 { // (CT_FIN_OWN; CT_ACK_KNOWN aside)
			t.Fatalf("the peer's FIN (the slow path's ct_update): fin %d, state %d; want fin 1, not closing", e.Fin, e.State)
		}
		back := tcpFlags(t, podIP, peerIP, 80, 50000, false, true, true)
		if r := f.run(f.objs.FromContainer, back); r != actOK {
			t.Fatalf("FIN out: %d", r)
		}
		if e := p.entry(); e.State != 2 {
			t.Fatalf("both FINs did not close the entry (the slow path's ct_update): state %d", e.State)
		}
	})
	t.Run("first reply", func(t *testing.T) {
		// The pod's SYN-ACK has not been seen back yet: the reply flag is
		// the slow path's to set.
		f := load(t)
		f.rule(dirEgress, peerID, 17, 53, 24, false)
		if r := f.run(f.objs.FromContainer, udp(t, podIP, peerIP, 5000, 53)); r != actOK {
			t.Fatalf("query out: %d", r)
		}
		if r := f.run(f.objs.ToContainer, udp(t, peerIP, podIP, 53, 5000)); r != actOK {
			t.Fatalf("answer in: %d", r)
		}
		if e := f.ctEntry(podIP, peerIP, 5000, 53, 17, dirEgress, podEP); e.Flags&1 == 0 || e.State != 1 {
			t.Fatalf("first reply not recorded: flags %d state %d", e.Flags, e.State)
		}
		// Recorded: the next answer takes the fast path.
		p := &ingressProbe{f: f, in: udp(t, peerIP, podIP, 53, 5000), src: podIP, dst: peerIP, sport: 5000, dport: 53, dir: dirEgress, proto: 17}
		if r, fast := p.send(nil); r != actOK || !fast {
			t.Fatalf("the next answer: verdict %d, fast path %v", r, fast)
		}
	})
	t.Run("L7 proxy port", func(t *testing.T) {
		// A flow through the proxy reaching the pod around it is dropped
		// on every packet, established or not.
		f := load(t)
		p := accepted(t, f)
		p.edit(func(e *DatapathCtEntry) { e.ProxyPort = 15001 })
		p.dropped("established flow with an L7 proxy port, not from the proxy", reasonProxyBypass)
	})
	t.Run("proxy upstream", func(t *testing.T) {
		f := load(t)
		p := opened(t, f)
		p.edit(func(e *DatapathCtEntry) { e.Flags |= 2 }) // CT_F_UPSTREAM
		p.dropped("reply of the proxy's upstream connection, not to the proxy", reasonProxyBypass)
	})
	t.Run("from the proxy", func(t *testing.T) {
		f := load(t)
		p := accepted(t, f)
		if r, fast := p.send(&sysSkBuff{Mark: 0xFA000000 | peerID}); r != actOK || fast {
			t.Fatalf("packet with the proxy's mark: verdict %d, fast path %v (want the slow path)", r, fast)
		}
	})
	t.Run("another interface", func(t *testing.T) {
		// The entry is the endpoint's whose interface the packet leaves
		// by: on an interface no endpoint's slow path recorded, or another
		// endpoint's, the flow's entry is not found.
		f := load(t)
		p := accepted(t, f)
		other := otherInterface(t)
		if r, fast := p.send(&skbIfCtx{Ifindex: uint32(other)}); r != actOK || fast {
			t.Fatalf("on an interface of no endpoint: verdict %d, fast path %v", r, fast)
		}
		otherIP := net.IPv4(10, 0, 0, 3).To4()
		k := ip4(otherIP)
		if err := f.objs.Endpoints.Put(&k, &DatapathEndpointInfo{Ifindex: uint32(other), Identity: podID, EpId: 8}); err != nil {
			t.Fatal(err)
		}
		ret, err := f.objs.FromContainer.Run(&ebpf.RunOptions{Data: tcp(t, otherIP, peerIP, 41000, 80, true, false), Context: &skbIfCtx{Ifindex: uint32(other)}})
		if err != nil || ret != actOK {
			t.Fatalf("the other endpoint's SYN: %d %v", ret, err)
		}
		if r, fast := p.send(&skbIfCtx{Ifindex: uint32(other)}); fast {
			t.Fatalf("on another endpoint's interface: verdict %d by the fast path", r)
		}
	})
}

// tcpFlags is tcp with FIN as well.
func tcpFlags(t *testing.T, src, dst net.IP, sport, dport uint16, syn, ack, fin bool) []byte {
	ip := ipv4(src, dst, layers.IPProtocolTCP)
	l4 := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), SYN: syn, ACK: ack, FIN: fin, Window: 1000, Ack: ackNumber(ack)}
	l4.SetNetworkLayerForChecksum(ip)
	return serialize(t, eth(), ip, l4)
}

// A pod that has sent nothing yet (its veth's ep_slots hint unset, which
// from_container writes) gets to_container's fast path from the second
// packet of a flow to it: the slow path records the hint when the packet
// leaves by the endpoint's own veth.
func TestToContainerFastPathBeforeThePodSends(t *testing.T) {
	f := load(t)
	slot := uint32(1) // the test run's veth: lo, ifindex 1
	if err := f.objs.EpSlots.Put(&slot, &DatapathEpSlot{}); err != nil {
		t.Fatal(err)
	}
	f.rule(dirIngress, peerID, 17, 53, 24, false)
	p := &ingressProbe{f: f, in: udp(t, peerIP, podIP, 5000, 53), src: peerIP, dst: podIP, sport: 5000, dport: 53, dir: dirIngress, proto: 17}
	if r := f.run(f.objs.ToContainer, p.in); r != actOK {
		t.Fatalf("first datagram: %d", r)
	}
	if r, fast := p.send(nil); r != actOK || !fast {
		t.Fatalf("second datagram: verdict %d, fast path %v: want passed on the fast path", r, fast)
	}
	// Leaving by another interface than the pod's veth: no hint for it.
	other := otherInterface(t)
	oslot := uint32(other) & (1<<16 - 1)
	if err := f.objs.EpSlots.Put(&oslot, &DatapathEpSlot{}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.objs.ToContainer.Run(&ebpf.RunOptions{Data: udp(t, peerIP, podIP, 5001, 53), Context: &skbIfCtx{Ifindex: uint32(other)}}); err != nil {
		t.Fatal(err)
	}
	var s DatapathEpSlot
	if err := f.objs.EpSlots.Lookup(&oslot, &s); err != nil {
		t.Fatal(err)
	}
	if s.Ifindex == uint32(other) {
		t.Fatalf("a packet to the pod leaving by interface %d made it the pod's veth: %+v", other, s)
	}
}
