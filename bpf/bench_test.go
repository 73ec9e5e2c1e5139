package bpf

import (
	"encoding/binary"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/filament-net/filament/internal/testutil"
)

// BenchmarkProgramPerPacket measures from_container per packet with
// BPF_PROG_TEST_RUN (kernel-timed over many repeats): an established TCP
// flow to a world address with 1k, 64k and 512k ipcache entries (its
// packets take the fast path, lib/fastpath.h), a new connection
// that takes the policy lookups (one run at a time, and the same SYN
// repeated in one run), the established packet one run at a time (the
// single run's overhead for a program that touches maps), and as the
// baseline a program that only returns TC_ACT_OK. Then the cost of
// forwarded-flow events (benchFlowEvents).
func BenchmarkProgramPerPacket(b *testing.B) {
	testutil.RequireRoot(b)
	pkt := func(sport uint16, syn bool) []byte {
		return tcpPacket(b, podIP, peerIP, sport, 80, syn, !syn)
	}
	runWant := func(b *testing.B, prog *ebpf.Program, data []byte, want uint32) float64 {
		const repeat = 200000
		var total time.Duration
		for i := 0; i < b.N; i++ {
			ret, d, err := runRepeat(prog, data, repeat)
			if err != nil {
				b.Fatal(err)
			}
			if ret != want {
				b.Fatalf("program returned %d", ret)
			}
			total += d
		}
		ns := float64(total.Nanoseconds()) / float64(b.N)
		b.ReportMetric(ns, "ns/pkt")
		b.ReportMetric(0, "ns/op")
		return ns
	}
	run := func(b *testing.B, prog *ebpf.Program, data []byte) float64 { return runWant(b, prog, data, actOK) }
	ok := returnOK(b)
	b.Run("baseline-return-ok", func(b *testing.B) { run(b, ok, pkt(1, true)) })
	// The same, one run at a time as new connections are timed: the test
	// run's own overhead for a single repeat.
	b.Run("baseline-return-ok-one-run", func(b *testing.B) { newConnections(b, ok, pkt, nil) })
	for _, entries := range []int{1000, 64000, 512000} {
		f := loadB(b)
		for i := 0; i < entries; i++ {
			k := DatapathIpcacheKey{Prefixlen: 32, Ip: binary.BigEndian.Uint32([]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})}
			v := DatapathIpcacheValue{Identity: uint32(1000 + i)}
			if err := f.objs.Ipcache.Put(&k, &v); err != nil {
				b.Fatal(err)
			}
		}
		k := DatapathPolicyKey{Prefixlen: 64 + 24, EpId: podEP, Dir: dirEgress, Identity: peerID, Proto: 6, Port: [2]uint8{0, 80}}
		if err := f.objs.Policy.Put(&k, &DatapathPolicyValue{}); err != nil {
			b.Fatal(err)
		}
		// Open the flow once (its SYN and the SYN-ACK back; the first
		// established packet settles it, ct_settle); the benchmark then
		// sends its established packets.
		benchOpened(b, f, podIP, peerIP, actOK)
		b.Run(fmt.Sprintf("established-ipcache-%dk", entries/1000), func(b *testing.B) {
			run(b, f.objs.FromContainer, pkt(40000, false))
		})
		b.Run(fmt.Sprintf("new-connection-ipcache-%dk", entries/1000), func(b *testing.B) {
			newConnections(b, f.objs.FromContainer, pkt, nil)
		})
		// The one-run overhead of a program that touches maps: the
		// established packet timed as new connections are.
		b.Run(fmt.Sprintf("established-one-run-ipcache-%dk", entries/1000), func(b *testing.B) {
			newConnections(b, f.objs.FromContainer, func(uint16, bool) []byte { return pkt(40000, false) }, nil)
		})
		// The same SYN 10,000 times in one kernel-timed run: the new
		// connection's work (policy lookups, conntrack entry replaced,
		// event) without the single run's overhead.
		// The ring is drained after each run (untimed), so no run finds it full.
		ring, drain := drainer(b, f.objs.Events)
		b.Run(fmt.Sprintf("new-connection-syn-repeated-ipcache-%dk", entries/1000), func(b *testing.B) {
			// One tuple: each repeat replaces its entry (the LRU takes a
			// node and frees the old one); the map gains one entry at most.
			had := countConntrack(b, f.objs.Conntrack, f.objs.ConntrackNew)
			synRepeated(b, f.objs.FromContainer, pkt(30000, true), func() {
				drain()
				if n := countConntrack(b, f.objs.Conntrack, f.objs.ConntrackNew); n > had+1 {
					b.Fatalf("%d conntrack entries after the repeated SYN, had %d: want one more at most", n, had)
				}
			})
		})
		// Each of 10,000 SYNs in one kernel-timed run from its own port:
		// every one makes a new conntrack entry (counted), as a new
		// connection does; beside it the same harness into return-OK,
		// which is the run's and the harness's own cost.
		b.Run(fmt.Sprintf("new-connection-fresh-tuples-ipcache-%dk", entries/1000), func(b *testing.B) {
			freshTuples(b, f, f.objs.FromContainer, pkt(1, true), drain)
		})
		b.Run(fmt.Sprintf("baseline-fresh-tuples-harness-ipcache-%dk", entries/1000), func(b *testing.B) {
			freshTuples(b, f, ok, pkt(1, true), drain)
		})
		ring.Close()
		f.objs.Close()
	}
	benchLocal(b, runWant)
	benchReceive(b, run)
	benchFlowEvents(b, pkt, run)
	benchNetdevWireGuard(b, run)
	benchNodePortNAT(b)
}

// benchNetdevWireGuard: from_netdev on a WireGuard datagram (UDP between
// the WireGuard ports, from a node to this node), with the node config's
// wireguard_port unset (the full NodePort and L7 lookups, none of which
// matches) and set (passed at once), and on a UDP datagram from another
// port with it set (still the full lookups); likewise a VXLAN datagram
// without and with the tunnel.
func benchNetdevWireGuard(b *testing.B, run func(*testing.B, *ebpf.Program, []byte) float64) {
	f := loadB(b)
	defer f.objs.Close()
	nodeIP := []byte{192, 168, 7, 1}
	datagram := udpPacket(b, peerIP, nodeIP, 51871, 51871)
	for _, port := range []uint16{0, 51871} {
		putConfig(b, f.objs.Config, DatapathNodeConfig{WireguardPort: port})
		b.Run(fmt.Sprintf("netdev-wireguard-datagram-port-%d", port), func(b *testing.B) { run(b, f.objs.FromNetdev, datagram) })
	}
	b.Run("netdev-other-udp-port-51871", func(b *testing.B) {
		run(b, f.objs.FromNetdev, udpPacket(b, peerIP, nodeIP, 40000, 51871))
	})
	// A VXLAN datagram (to the overlay's port 8472 from a flow-hash port)
	// without the tunnel (the full lookups) and with it (passed at once).
	vxlan := udpPacket(b, peerIP, nodeIP, 54321, 8472)
	for _, c := range []struct {
		name  string
		vxlan uint32
	}{{"off", 0}, {"on", 99}} {
		putConfig(b, f.objs.Config, DatapathNodeConfig{VxlanIfindex: c.vxlan})
		b.Run("netdev-vxlan-datagram-tunnel-"+c.name, func(b *testing.B) { run(b, f.objs.FromNetdev, vxlan) })
	}
}

// benchLocal: an established TCP flow between two pods of the node (1k
// ipcache entries), both directions enforced with an allow: the source's
// egress and the destination's ingress, delivered into the destination's
// namespace (TC_ACT_REDIRECT).
func benchLocal(b *testing.B, runWant func(*testing.B, *ebpf.Program, []byte, uint32) float64) {
	f := loadB(b)
	defer f.objs.Close()
	dstIP := []byte{10, 0, 0, 4}
	const dstEP, dstID = uint16(9), uint32(0x10400)
	k := ip4(dstIP)
	if err := f.objs.Endpoints.Put(&k, &DatapathEndpointInfo{Ifindex: 4242, Identity: dstID, EpId: dstEP, Flags: 3}); err != nil {
		b.Fatal(err)
	}
	f.ipcache1k(b)
	for _, pk := range []DatapathPolicyKey{
		{Prefixlen: 64 + 24, EpId: podEP, Dir: dirEgress, Identity: dstID, Proto: 6, Port: [2]uint8{0, 80}},
		{Prefixlen: 64 + 24, EpId: dstEP, Dir: dirIngress, Identity: podID, Proto: 6, Port: [2]uint8{0, 80}},
	} {
		if err := f.objs.Policy.Put(&pk, &DatapathPolicyValue{}); err != nil {
			b.Fatal(err)
		}
	}
	benchOpened(b, f, podIP, dstIP, actRedirect)
	b.Run("established-local-pod", func(b *testing.B) {
		runWant(b, f.objs.FromContainer, tcpPacket(b, podIP, dstIP, 40000, 80, false, true), actRedirect)
	})
}

// benchReceive: the receiving side of a connection the pod accepted
// (ingress enforced with an allow, 1k ipcache entries): to_container on
// its established packets in (the kernel routed them: native routing,
// WireGuard) and on the replies to the pod's own connection, and
// from_netdev on the established packet in (native routing: no NodePort
// translation, the ingress L7 check).
func benchReceive(b *testing.B, run func(*testing.B, *ebpf.Program, []byte) float64) {
	f := loadB(b)
	defer f.objs.Close()
	f.ipcache1k(b)
	for _, pk := range []DatapathPolicyKey{
		{Prefixlen: 64 + 24, EpId: podEP, Dir: dirIngress, Identity: peerID, Proto: 6, Port: [2]uint8{0, 80}},
		{Prefixlen: 64 + 24, EpId: podEP, Dir: dirEgress, Identity: peerID, Proto: 6, Port: [2]uint8{0, 80}},
	} {
		if err := f.objs.Policy.Put(&pk, &DatapathPolicyValue{}); err != nil {
			b.Fatal(err)
		}
	}
	// The handshakes: accepted (peer:50000 -> pod:80) and opened (pod:40000 -> peer:80).
	for _, step := range []struct {
		prog *ebpf.Program
		pkt  []byte
	}{
		{f.objs.ToContainer, tcpPacket(b, peerIP, podIP, 50000, 80, true, false)},
		{f.objs.FromContainer, tcpPacket(b, podIP, peerIP, 80, 50000, true, true)},
		{f.objs.ToContainer, tcpPacket(b, peerIP, podIP, 50000, 80, false, true)},
		{f.objs.FromContainer, tcpPacket(b, podIP, peerIP, 40000, 80, true, false)},
		{f.objs.ToContainer, tcpPacket(b, peerIP, podIP, 80, 40000, true, true)},
		{f.objs.FromContainer, tcpPacket(b, podIP, peerIP, 40000, 80, false, true)},
	} {
		if ret, _, err := runRepeat(step.prog, step.pkt, 1); err != nil || ret != actOK {
			b.Fatal(ret, err)
		}
	}
	b.Run("to-container-established-accepted", func(b *testing.B) {
		run(b, f.objs.ToContainer, tcpPacket(b, peerIP, podIP, 50000, 80, false, true))
	})
	b.Run("to-container-established-reply", func(b *testing.B) {
		run(b, f.objs.ToContainer, tcpPacket(b, peerIP, podIP, 80, 40000, false, true))
	})
	b.Run("netdev-established-to-pod", func(b *testing.B) {
		run(b, f.objs.FromNetdev, tcpPacket(b, peerIP, podIP, 50000, 80, false, true))
	})
}

// benchOpened opens the TCP connection src:40000 -> dst:80 from the pod: its
// SYN out (verdict want) and the SYN-ACK back; its next packet out
// establishes it (ct_settle), as a real connection's third segment does.
func benchOpened(b *testing.B, f *benchFixture, src, dst net.IP, want uint32) {
	b.Helper()
	if ret, _, err := runRepeat(f.objs.FromContainer, tcpPacket(b, src, dst, 40000, 80, true, false), 1); err != nil || ret != want {
		b.Fatal("SYN: ", ret, err)
	}
	if ret, _, err := runRepeat(f.objs.ToContainer, tcpPacket(b, dst, src, 80, 40000, true, true), 1); err != nil || ret != actOK {
		b.Fatal("SYN-ACK: ", ret, err)
	}
}

// newConnections times SYNs of new connections one run at a time, 200 a
// round, each from a fresh port (a SYN of a tuple in conntrack would be
// judged new as well, but its entry would be replaced rather than made);
// after, when set, runs after each round, untimed.
func newConnections(b *testing.B, prog *ebpf.Program, pkt func(uint16, bool) []byte, after func()) float64 {
	return timedRuns(b, prog, func(n int) []byte { return pkt(uint16(10000+n%50000), true) }, actOK, after)
}

// returnOK is a tc program that only returns TC_ACT_OK, the benchmarks'
// baseline; it is closed when b ends.
func returnOK(b *testing.B) *ebpf.Program {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	return p
}

// timedRuns times prog one run at a time, 200 runs a round, the n-th on
// packet(n), each of which must return want; after, when set, runs after
// each round, untimed.
func timedRuns(b *testing.B, prog *ebpf.Program, packet func(n int) []byte, want uint32, after func()) float64 {
	var total time.Duration
	for i := 0; i < b.N; i++ {
		var sum time.Duration
		for j := 0; j < 200; j++ {
			ret, d, err := runRepeat(prog, packet(i*200+j), 1)
			if err != nil || ret != want {
				b.Fatalf("verdict %d (%v), want %d", ret, err, want)
			}
			sum += d
		}
		total += sum / 200
		if after != nil {
			after()
		}
	}
	ns := float64(total.Nanoseconds()) / float64(b.N)
	b.ReportMetric(ns, "ns/pkt")
	b.ReportMetric(0, "ns/op")
	return ns
}

// benchFlowEvents: the cost of forwarded-flow events (issue 17), at an
// endpoint that enforces nothing (1k ipcache entries), where the
// connections mode adds an event to every new connection: new
// connections with flow events connections and off, and established
// packets with both (no event either way: they should not differ). The
// events ring is drained after each round (untimed), so no run finds it
// full, and events/conn counts what the rounds reported.
func benchFlowEvents(b *testing.B, pkt func(uint16, bool) []byte, run func(*testing.B, *ebpf.Program, []byte) float64) {
	f := loadB(b)
	defer f.objs.Close()
	k := ip4(podIP)
	v := DatapathEndpointInfo{Ifindex: 1, Identity: podID, EpId: podEP} // enforces nothing
	if err := f.objs.Endpoints.Put(&k, &v); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < 1000; i++ {
		k := DatapathIpcacheKey{Prefixlen: 32, Ip: binary.BigEndian.Uint32([]byte{10, 0, byte(i >> 8), byte(i)})}
		if err := f.objs.Ipcache.Put(&k, &DatapathIpcacheValue{Identity: uint32(1000 + i)}); err != nil {
			b.Fatal(err)
		}
	}
	ring, drainRing := drainer(b, f.objs.Events)
	defer ring.Close()
	events := 0
	drain := func() { events += drainRing() }
	modes := []struct {
		name string
		mode DatapathFlowEvents
	}{{"connections", DatapathFlowEventsFLOW_EVENTS_CONNECTIONS}, {"off", DatapathFlowEventsFLOW_EVENTS_OFF}}
	var ns [3][2]float64 // new connection, repeated SYN, established × connections, off
	for mi, m := range modes {
		putConfig(b, f.objs.Config, DatapathNodeConfig{FlowEvents: uint32(m.mode)})
		clearConntrack(b, f.objs.Conntrack, f.objs.ConntrackNew) // each mode's SYNs make their entries, none replaces one
		drain()
		b.Run("unenforced-new-connection-flow-events-"+m.name, func(b *testing.B) {
			events = 0
			ns[0][mi] = newConnections(b, f.objs.FromContainer, pkt, drain)
			b.ReportMetric(float64(events)/float64(b.N*200), "events/conn")
		})
		// The same SYN 10,000 times a round, timed by the kernel (less
		// noisy than one run at a time): a SYN is always judged new, so
		// each takes the policy lookups and replaces the conntrack entry,
		// and reports (within the ring's room: about 18,000 events).
		b.Run("unenforced-syn-repeated-flow-events-"+m.name, func(b *testing.B) {
			events = 0
			ns[1][mi] = synRepeated(b, f.objs.FromContainer, pkt(30000, true), drain)
			b.ReportMetric(float64(events)/float64(b.N*10000), "events/conn")
		})
		// Open the flow once; then its established packets.
		benchOpened(b, f, podIP, peerIP, actOK)
		drain()
		b.Run("unenforced-established-flow-events-"+m.name, func(b *testing.B) {
			events = 0
			ns[2][mi] = run(b, f.objs.FromContainer, pkt(40000, false))
			drain()
			b.ReportMetric(float64(events)/float64(b.N*200000), "events/pkt")
		})
	}
	// Side by side (benchmark logs of a parent are not shown).
	fmt.Printf("flow events, ns/pkt at an unenforced endpoint:   connections |     off\n")
	for i, what := range []string{"new connection (one run each)", "SYN repeated (10,000 a run)", "established"} {
		fmt.Printf("  %-45s %11.0f | %7.0f\n", what, ns[i][0], ns[i][1])
	}
}

// synRepeated times data 10,000 times in one kernel-timed run, b.N runs;
// after runs after each, untimed.
func synRepeated(b *testing.B, prog *ebpf.Program, data []byte, after func()) float64 {
	var total time.Duration
	for i := 0; i < b.N; i++ {
		ret, d, err := runRepeat(prog, data, 10000)
		if err != nil || ret != actOK {
			b.Fatal(ret, err)
		}
		total += d
		after()
	}
	ns := float64(total.Nanoseconds()) / float64(b.N)
	b.ReportMetric(ns, "ns/pkt")
	b.ReportMetric(0, "ns/op")
	return ns
}

// freshTuples times prog on 10,000 TCP SYNs in one kernel-timed run, each
// from another source port: a harness program writes the next port of a
// counter into the packet (the test run passes the same skb to every
// repeat) and tail-calls prog. Conntrack is cleared and the events ring
// drained after each run, untimed. With from_container it checks that the
// run made one conntrack entry per SYN.
func freshTuples(b *testing.B, f *benchFixture, prog *ebpf.Program, syn []byte, drain func() int) float64 {
	const repeat = 10000
	counter, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer counter.Close()
	progs, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer progs.Close()
	if err := progs.Put(uint32(0), prog); err != nil {
		b.Fatal(err)
	}
	const sportOff = 14 + 20 // Ethernet, IPv4 without options
	harness, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Reg(asm.R6, asm.R1),
			asm.StoreImm(asm.R10, -4, 0, asm.Word),
			asm.LoadMapPtr(asm.R1, counter.FD()),
			asm.Mov.Reg(asm.R2, asm.R10),
			asm.Add.Imm(asm.R2, -4),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "out"),
			asm.LoadMem(asm.R1, asm.R0, 0, asm.Word),
			asm.Add.Imm(asm.R1, 1),
			asm.StoreMem(asm.R0, 0, asm.R1, asm.Word),
			asm.HostTo(asm.BE, asm.R1, asm.Half),
			asm.StoreMem(asm.R10, -8, asm.R1, asm.Half),
			asm.Mov.Reg(asm.R1, asm.R6),
			asm.Mov.Imm(asm.R2, sportOff),
			asm.Mov.Reg(asm.R3, asm.R10),
			asm.Add.Imm(asm.R3, -8),
			asm.Mov.Imm(asm.R4, 2),
			asm.Mov.Imm(asm.R5, 0),
			asm.FnSkbStoreBytes.Call(),
			asm.Mov.Reg(asm.R1, asm.R6),
			asm.LoadMapPtr(asm.R2, progs.FD()),
			asm.Mov.Imm(asm.R3, 0),
			asm.FnTailCall.Call(),
			asm.Mov.Imm(asm.R0, 99).WithSymbol("out"), // not reached: the tail call failed
			asm.Return(),
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer harness.Close()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		clearConntrack(b, f.objs.Conntrack, f.objs.ConntrackNew)
		ret, d, err := runRepeat(harness, syn, repeat)
		if err != nil || ret != actOK {
			b.Fatal(ret, err)
		}
		if prog == f.objs.FromContainer {
			if n := countConntrack(b, f.objs.Conntrack, f.objs.ConntrackNew); n != repeat {
				b.Fatalf("%d conntrack entries after %d SYNs from fresh ports, want one each", n, repeat)
			}
		}
		total += d
		drain()
	}
	clearConntrack(b, f.objs.Conntrack, f.objs.ConntrackNew)
	ns := float64(total.Nanoseconds()) / float64(b.N)
	b.ReportMetric(ns, "ns/pkt")
	b.ReportMetric(0, "ns/op")
	return ns
}

// countConntrack counts the entries of the conntrack tables ms.
func countConntrack(b *testing.B, ms ...*ebpf.Map) int {
	var k DatapathCtKey
	var v DatapathCtEntry
	n := 0
	for _, m := range ms {
		it := m.Iterate()
		for it.Next(&k, &v) {
			n++
		}
		if err := it.Err(); err != nil {
			b.Fatal(err)
		}
	}
	return n
}

// drainer opens a reader of the events ring and returns it with a
// function that reads what the ring holds and says how many events.
func drainer(b *testing.B, m *ebpf.Map) (*ringbuf.Reader, func() int) {
	ring, err := ringbuf.NewReader(m)
	if err != nil {
		b.Fatal(err)
	}
	return ring, func() int {
		n := 0
		ring.SetDeadline(time.Now())
		var rec ringbuf.Record
		for ring.ReadInto(&rec) == nil {
			n++
		}
		return n
	}
}

// clearConntrack empties the conntrack tables ms.
func clearConntrack(b *testing.B, ms ...*ebpf.Map) {
	for _, m := range ms {
		var k DatapathCtKey
		var keys []DatapathCtKey
		var v DatapathCtEntry
		it := m.Iterate()
		for it.Next(&k, &v) {
			keys = append(keys, k)
		}
		if err := it.Err(); err != nil {
			b.Fatal(err)
		}
		for i := range keys {
			if err := m.Delete(&keys[i]); err != nil {
				b.Fatal(err)
			}
		}
	}
}

func runRepeat(prog *ebpf.Program, data []byte, repeat uint32) (uint32, time.Duration, error) {
	return prog.Benchmark(data, int(repeat), nil)
}

type benchFixture struct{ objs DatapathObjects }

// ipcache1k adds 1,000 ipcache entries (10.1.0.0-10.1.3.231).
func (f *benchFixture) ipcache1k(b *testing.B) {
	for i := 0; i < 1000; i++ {
		k := DatapathIpcacheKey{Prefixlen: 32, Ip: binary.BigEndian.Uint32([]byte{10, 1, byte(i >> 8), byte(i)})}
		if err := f.objs.Ipcache.Put(&k, &DatapathIpcacheValue{Identity: uint32(1000 + i)}); err != nil {
			b.Fatal(err)
		}
	}
}

func loadB(b *testing.B) *benchFixture {
	f := &benchFixture{}
	if err := LoadDatapathObjects(&f.objs, nil); err != nil {
		b.Fatal(err)
	}
	putConfig(b, f.objs.Config, DatapathNodeConfig{})
	k := ip4(podIP)
	v := DatapathEndpointInfo{Ifindex: 1, Identity: podID, EpId: podEP, Flags: 3}
	if err := f.objs.Endpoints.Put(&k, &v); err != nil {
		b.Fatal(err)
	}
	ik := DatapathIpcacheKey{Prefixlen: 32, Ip: ip4(peerIP)}
	if err := f.objs.Ipcache.Put(&ik, &DatapathIpcacheValue{Identity: peerID}); err != nil {
		b.Fatal(err)
	}
	return f
}
