package bpf

import (
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
)

// benchNodePortNAT: from_netdev on an established NodePort flow to a
// backend on another node (native routing, no encryption): a client's
// segment (looked up, translated to the backend, sent on by the FIB: a
// namespace of its own routes both, backendRoute) and the backend's
// (translated back to the client). Each packet looks up its own entry and the other direction's and
// refreshes both. One run at a time (a repeated run would see its own
// rewritten packet), beside the same harness into a program that only
// returns TC_ACT_OK.
func benchNodePortNAT(b *testing.B) {
	remote := net.IPv4(10, 9, 9, 9).To4()
	ns := backendRoute(b, remote, peerIP)
	f := loadB(b)
	defer f.objs.Close()
	nodeIP := net.IPv4(192, 168, 7, 1).To4()
	const fe, be, sport = 30090, 8080, 40000
	if err := f.objs.LbServices.Put(&DatapathLbKey{Vip: ip4(nodeIP), Port: htons(fe), Proto: 6},
		&DatapathLbService{Id: 1, Count: 1, Flags: lbFlagNodePort}); err != nil {
		b.Fatal(err)
	}
	sk := DatapathLbSlotKey{Id: 1, Slot: 1}
	bk := netip.AddrFrom4([4]byte(remote))
	if err := f.objs.LbSlots.Put(&sk, &DatapathLbBackend{Ip: ip4(bk.AsSlice()), Port: htons(be), Id: 1}); err != nil {
		b.Fatal(err)
	}
	once := func(pkt []byte) uint32 {
		ret, _, err := runRepeat(f.objs.FromNetdev, pkt, 1)
		if err != nil {
			b.Fatal(err)
		}
		return ret
	}
	once(tcpPacket(b, peerIP, nodeIP, sport, fe, true, false))
	var k DatapathLbNatKey
	var v DatapathLbNat
	var nsport uint16
	for _, m := range natTablesB(f) {
		for it := m.Iterate(); it.Next(&k, &v); {
			if v.Reverse == 1 {
				nsport = htons(k.Dport)
			}
		}
	}
	if nsport == 0 {
		b.Fatal("no translation")
	}
	once(tcpPacket(b, remote, nodeIP, be, nsport, true, true))
	client := tcpPacket(b, peerIP, nodeIP, sport, fe, false, true)
	backend := tcpPacket(b, remote, nodeIP, be, nsport, false, true)
	cv, bv := once(client), once(backend)
	ok := returnOK(b)
	var base float64
	b.Run("baseline-one-run", func(b *testing.B) {
		onNetns(b, ns, func() { base = timedRuns(b, ok, func(int) []byte { return client }, actOK, nil) })
	})
	for _, c := range []struct {
		name string
		pkt  []byte
		want uint32
	}{{"client", client, cv}, {"backend", backend, bv}} {
		b.Run("netdev-nodeport-established-"+c.name, func(b *testing.B) {
			var per float64
			onNetns(b, ns, func() { per = timedRuns(b, f.objs.FromNetdev, func(int) []byte { return c.pkt }, c.want, nil) })
			b.Logf("from_netdev, established NodePort flow, the %s's packet: %.1f ns/pkt, the one-run harness alone %.1f ns", c.name, per, base)
		})
	}
	// A new connection's SYN to a NodePort whose backend is the pod of
	// this node: no translation found (either table), a backend picked,
	// both halves claimed (in lb_nats_new since 2026-12-06), sent to the
	// pod. Each SYN from a client port of its own; both tables are
	// emptied after each round, untimed.
	const localFE = 30091
	if err := f.objs.LbServices.Put(&DatapathLbKey{Vip: ip4(nodeIP), Port: htons(localFE), Proto: 6},
		&DatapathLbService{Id: 2, Count: 1, Flags: lbFlagNodePort}); err != nil {
		b.Fatal(err)
	}
	if err := f.objs.LbSlots.Put(&DatapathLbSlotKey{Id: 2, Slot: 1}, &DatapathLbBackend{Ip: ip4(podIP), Port: htons(80), Id: 2}); err != nil {
		b.Fatal(err)
	}
	syn := func(n int) []byte { return tcpPacket(b, peerIP, nodeIP, uint16(10000+n%50000), localFE, true, false) }
	empty := func() {
		for _, m := range natTablesB(f) {
			var keys []DatapathLbNatKey
			for it := m.Iterate(); it.Next(&k, &v); {
				keys = append(keys, k)
			}
			for i := range keys {
				m.Delete(&keys[i])
			}
		}
	}
	sv := once(syn(0))
	empty()
	b.Run("netdev-nodeport-syn-local-backend", func(b *testing.B) {
		var per float64
		onNetns(b, ns, func() { per = timedRuns(b, f.objs.FromNetdev, syn, sv, empty) })
		b.Logf("from_netdev, a NodePort SYN to a local backend: %.1f ns/pkt, the one-run harness alone %.1f ns", per, base)
	})
}

// natTablesB are the NodePort translation tables of a benchmark's
// programs; lb_nats_new is left out when the object has none (an object
// from before 2026-12-06, run with this file for a comparison).
func natTablesB(f *benchFixture) []*ebpf.Map {
	out := []*ebpf.Map{f.objs.LbNats}
	if f.objs.LbNatsNew != nil {
		out = append(out, f.objs.LbNatsNew)
	}
	return out
}
