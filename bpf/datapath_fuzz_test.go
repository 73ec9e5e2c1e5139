package bpf

import (
	"encoding/binary"
	"errors"
	"net"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/filament-net/filament/internal/testutil"
)

// Fuzzing the datapath with BPF_PROG_TEST_RUN: random frames through
// from_overlay (with a random outer source and VNI), from_container and
// to_container. The properties are that the kernel never refuses a run the
// program should handle, and that nothing from a source that is not a
// known node (overlay) or the sending endpoint's own address (container)
// is let through, and nothing from an unknown address is delivered into an
// endpoint whose ingress is enforced.
//
// A test run's skb has no tunnel metadata, so bpf_skb_get_tunnel_key fails
// in from_overlay itself. overlayRunner puts it there as the VXLAN device
// would: a small program sets the tunnel key (outer source and VNI from a
// map) and tail-calls from_overlay.

const actRedirect = 7 // TC_ACT_REDIRECT: bpf_redirect / bpf_redirect_peer

var (
	fzPod     = net.IPv4(10, 0, 0, 2).To4() // ingress and egress enforced
	fzOpen    = net.IPv4(10, 0, 0, 3).To4() // a second endpoint, nothing enforced
	fzPeer    = net.IPv4(10, 1, 0, 9).To4() // a remote pod, in the ipcache
	fzNode    = net.IPv4(172, 30, 1, 2).To4()
	fzPeerID  = uint32(0x10200)
	fzPodEP   = uint16(7)
	fzOpenEP  = uint16(8)
	fzOpenID  = uint32(0x10300)
	fzPodPort = uint16(80)
)

type fuzzFixture struct {
	objs    DatapathObjects
	params  *ebpf.Map // outer source (host order) and VNI for overlayRunner
	overlay *ebpf.Program
}

func loadFuzz(f testing.TB) *fuzzFixture {
	f.Helper()
	testutil.RequireRoot(f)
	x := &fuzzFixture{}
	if err := LoadDatapathObjects(&x.objs, nil); err != nil {
		f.Fatalf("load: %v", err)
	}
	f.Cleanup(func() { x.objs.Close() })
	putConfig(f, x.objs.Config, DatapathNodeConfig{})
	put := func(m *ebpf.Map, k, v any) {
		if err := m.Put(k, v); err != nil {
			f.Fatal(err)
		}
	}
	for _, ep := range []struct {
		ip    net.IP
		id    uint32
		ep    uint16
		flags uint8
	}{{fzPod, podID, fzPodEP, 3}, {fzOpen, fzOpenID, fzOpenEP, 0}} {
		k := ip4(ep.ip)
		v := DatapathEndpointInfo{Ifindex: 1, Identity: ep.id, EpId: ep.ep, Flags: ep.flags}
		copy(v.Mac[:], podMAC)
		copy(v.HostMac[:], hostMAC)
		put(x.objs.Endpoints, &k, &v)
	}
	put(x.objs.Ipcache, &DatapathIpcacheKey{Prefixlen: 32, Ip: ip4(fzPeer)}, &DatapathIpcacheValue{Identity: fzPeerID, TunnelIp: ip4(fzNode)})
	put(x.objs.Nodes, ip4(fzNode), uint32(1))
	// The pod accepts TCP 80 from the remote pod, and may open TCP 80 to the other endpoint.
	put(x.objs.Policy, &DatapathPolicyKey{Prefixlen: 64 + 24, EpId: fzPodEP, Dir: dirIngress, Identity: fzPeerID, Proto: 6, Port: [2]uint8{0, uint8(fzPodPort)}}, &DatapathPolicyValue{})
	put(x.objs.Policy, &DatapathPolicyKey{Prefixlen: 64 + 24, EpId: fzPodEP, Dir: dirEgress, Identity: fzOpenID, Proto: 6, Port: [2]uint8{0, uint8(fzPodPort)}}, &DatapathPolicyValue{})
	x.overlayRunner(f)
	return x
}

// overlayRunner builds the program that gives the skb tunnel metadata
// (struct bpf_tunnel_key: tunnel_id at 0, local_ipv4 at 28, 44 bytes; the
// receive side reads the sender from the key's source, which the setter
// takes from local_ipv4) and tail-calls from_overlay.
func (x *fuzzFixture) overlayRunner(f testing.TB) {
	var err error
	x.params, err = ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { x.params.Close() })
	progs, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { progs.Close() })
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.StoreImm(asm.RFP, -4, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, x.params.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JNE.Imm(asm.R0, 0, "found"),
		asm.Mov.Imm(asm.R0, 99),
		asm.Return(),
		asm.LoadMem(asm.R7, asm.R0, 0, asm.Word).WithSymbol("found"),
		asm.LoadMem(asm.R8, asm.R0, 4, asm.Word),
	}
	insns = append(insns, asm.Mov.Imm(asm.R9, 0))
	for off := int16(-48); off < 0; off += 8 {
		insns = append(insns, asm.StoreMem(asm.RFP, off, asm.R9, asm.DWord))
	}
	insns = append(insns,
		asm.StoreMem(asm.RFP, -48, asm.R8, asm.Word),    // tunnel_id
		asm.StoreMem(asm.RFP, -48+28, asm.R7, asm.Word), // local_ipv4
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -48),
		asm.Mov.Imm(asm.R3, 44),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnSkbSetTunnelKey.Call(),
		asm.JEq.Imm(asm.R0, 0, "tail"),
		asm.Mov.Imm(asm.R0, 98),
		asm.Return(),
		asm.Mov.Reg(asm.R1, asm.R6).WithSymbol("tail"),
		asm.LoadMapPtr(asm.R2, progs.FD()),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnTailCall.Call(),
		asm.Mov.Imm(asm.R0, 97),
		asm.Return(),
	)
	x.overlay, err = ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, Instructions: insns, License: "Dual BSD/GPL"})
	if err != nil {
		f.Fatalf("overlay runner: %v", err)
	}
	f.Cleanup(func() { x.overlay.Close() })
	if err := progs.Put(uint32(0), uint32(x.objs.FromOverlay.FD())); err != nil {
		f.Fatal(err)
	}
}

// run runs prog on frame with fresh connection tracking (each input is
// judged on its own) and returns the verdict and the drop counters that
// moved. ok is false when the kernel refuses the frame, which it may only
// do for frames shorter than the headers their EtherType announces.
func (x *fuzzFixture) run(t *testing.T, prog *ebpf.Program, frame []byte) (verdict uint32, ok bool) {
	t.Helper()
	var k DatapathCtKey
	for _, m := range []*ebpf.Map{x.objs.Conntrack, x.objs.ConntrackNew} {
		for m.NextKey(nil, &k) == nil {
			if err := m.Delete(&k); err != nil {
				t.Fatal(err)
			}
		}
	}
	ret, err := prog.Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		if !kernelMayRefuse(frame) {
			t.Fatalf("kernel refused a %d-byte frame: %v", len(frame), err)
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			t.Skip(err)
		}
		return 0, false
	}
	return ret, true
}

// kernelMayRefuse: BPF_PROG_TEST_RUN takes a frame of at least an Ethernet
// header, as long as the headers its EtherType announces, and fitting in a
// page with the skb's head and tail room (about 3.7 KiB).
func kernelMayRefuse(frame []byte) bool {
	if len(frame) < 14 || len(frame) > 4096-512 {
		return true
	}
	switch binary.BigEndian.Uint16(frame[12:14]) {
	case 0x0800:
		return len(frame) < 14+20
	case 0x86dd:
		return len(frame) < 14+40
	}
	return false
}

// ipv4Addrs returns the addresses of an IPv4 frame as the program parses
// it (header complete, version 4, IHL at least 5).
func ipv4Addrs(frame []byte) (src, dst net.IP, ok bool) {
	if len(frame) < 14+20 || binary.BigEndian.Uint16(frame[12:14]) != 0x0800 || frame[14]>>4 != 4 || frame[14]&0x0f < 5 {
		return nil, nil, false
	}
	return net.IP(frame[26:30]), net.IP(frame[30:34]), true
}

func isARP(frame []byte) bool {
	return len(frame) >= 14 && binary.BigEndian.Uint16(frame[12:14]) == 0x0806
}

func fuzzSeeds(f *testing.F, add func(frame []byte)) {
	syn := func(src, dst net.IP, dport uint16) []byte { return tcpPacket(f, src, dst, 40000, dport, true, false) }
	for _, fr := range [][]byte{
		syn(fzPeer, fzPod, 80), syn(fzPeer, fzPod, 81), syn(net.IPv4(203, 0, 113, 7).To4(), fzPod, 80),
		syn(fzPod, fzOpen, 80), syn(fzPod, fzPeer, 80), syn(net.IPv4(10, 0, 0, 99).To4(), fzOpen, 80),
		syn(fzPeer, fzOpen, 22), tcpPacket(f, fzPeer, fzPod, 40000, 80, false, true),
	} {
		add(fr)
	}
}

// FuzzFromOverlay: a frame arriving on the VXLAN device from outer source
// outer (host order) with VNI vni. From an address that is not a known
// node it is always dropped (REASON_TUNNEL_SOURCE); from a node it is
// delivered into the enforcing pod only as its policy says (TCP 80 from the
// remote pod's identity).
func FuzzFromOverlay(f *testing.F) {
	x := loadFuzz(f)
	node := binary.BigEndian.Uint32(fzNode)
	fuzzSeeds(f, func(fr []byte) {
		f.Add(node, fzPeerID, fr)
		f.Add(node+1, fzPeerID, fr)
		f.Add(node, uint32(2), fr)
	})
	f.Fuzz(func(t *testing.T, outer, vni uint32, frame []byte) {
		var p [8]byte
		binary.NativeEndian.PutUint32(p[:], outer)
		binary.NativeEndian.PutUint32(p[4:], vni)
		if err := x.params.Put(uint32(0), p[:]); err != nil {
			t.Fatal(err)
		}
		before := x.count(t, reasonTunnelSource)
		verdict, ok := x.run(t, x.overlay, frame)
		if !ok {
			return
		}
		if verdict >= 97 && verdict <= 99 {
			t.Fatalf("the overlay runner did not reach from_overlay: %d", verdict)
		}
		if outer != node {
			if verdict != actShot || x.count(t, reasonTunnelSource) != before+1 {
				t.Fatalf("frame from unknown outer source %#x: verdict %d, tunnel-source drops %d -> %d", outer, verdict, before, x.count(t, reasonTunnelSource))
			}
			return
		}
		if verdict != actRedirect {
			return
		}
		_, dst, isIP := ipv4Addrs(frame)
		switch {
		case !isIP:
			t.Fatalf("a frame that is not IPv4 was delivered into an endpoint")
		case dst.Equal(fzOpen):
		case dst.Equal(fzPod):
			ihl := int(frame[14]&0x0f) * 4
			if vni != fzPeerID || frame[14+9] != 6 || len(frame) < 14+ihl+4 || binary.BigEndian.Uint16(frame[14+ihl+2:]) != fzPodPort {
				t.Fatalf("delivered into the enforcing pod against its policy (VNI %#x)", vni)
			}
		default:
			t.Fatalf("redirected to %v, which is not an endpoint", dst)
		}
	})
}

// FuzzFromContainer: a frame sent by a pod (the test run's skb is on lo,
// the pods' interface here). Only ARP and IPv4 from the pod's own address
// may pass; an IPv4 frame from any other address is dropped.
func FuzzFromContainer(f *testing.F) {
	x := loadFuzz(f)
	fuzzSeeds(f, func(fr []byte) { f.Add(fr) })
	f.Fuzz(func(t *testing.T, frame []byte) {
		verdict, ok := x.run(t, x.objs.FromContainer, frame)
		if !ok || verdict == actShot {
			return
		}
		src, dst, isIP := ipv4Addrs(frame)
		switch {
		case isARP(frame):
		case !isIP:
			t.Fatalf("a frame that is neither ARP nor IPv4 passed: verdict %d", verdict)
		case !src.Equal(fzPod) && !src.Equal(fzOpen):
			t.Fatalf("spoofed source %v passed: verdict %d", src, verdict)
		case verdict == actRedirect && !dst.Equal(fzPod) && !dst.Equal(fzOpen):
			t.Fatalf("redirected to %v, which is not an endpoint", dst)
		}
	})
}

// FuzzToContainer: a frame the node routes to a pod's interface. Nothing
// from an address that is neither an endpoint nor in the ipcache (world)
// reaches the pod that enforces ingress.
func FuzzToContainer(f *testing.F) {
	x := loadFuzz(f)
	fuzzSeeds(f, func(fr []byte) { f.Add(fr) })
	f.Fuzz(func(t *testing.T, frame []byte) {
		verdict, ok := x.run(t, x.objs.ToContainer, frame)
		if !ok || verdict == actShot {
			return
		}
		src, dst, isIP := ipv4Addrs(frame)
		if isIP && dst.Equal(fzPod) && !src.Equal(fzPeer) && !src.Equal(fzPod) && !src.Equal(fzOpen) {
			t.Fatalf("a frame from unknown %v reached the enforcing pod: verdict %d", src, verdict)
		}
	})
}

// FuzzNativeDeliver: a frame from the underlay through from_netdev, in
// native routing with the programs forwarding (native_deliver), addressed
// to this host's MAC or to another. Only an IPv4 TCP or UDP packet to this
// host, from the remote pod (the one address of the mesh in the ipcache)
// to an endpoint, is delivered into it, and into the enforcing pod only on
// the port its policy allows the remote pod.
func FuzzNativeDeliver(f *testing.F) {
	x := loadFuzz(f)
	k := uint32(0)
	if err := x.objs.Config.Put(&k, &DatapathNodeConfig{}); err != nil { // native, the programs forward
		f.Fatal(err)
	}
	fuzzSeeds(f, func(fr []byte) { f.Add(true, fr); f.Add(false, fr) })
	f.Add(true, tcpPacket(f, fzPeer, fzPod, 40000, fzPodPort, true, false))
	f.Add(true, udpPacket(f, fzPeer, fzOpen, 40000, 53))
	f.Fuzz(func(t *testing.T, forHost bool, frame []byte) {
		if forHost && len(frame) >= 6 {
			frame = append([]byte{0, 0, 0, 0, 0, 0}, frame[6:]...) // lo's MAC: the test run's frames arrive on it
		}
		verdict, ok := x.run(t, x.objs.FromNetdev, frame)
		if !ok || verdict != actRedirect {
			return
		}
		src, dst, isIP := ipv4Addrs(frame)
		switch {
		case !isIP:
			t.Fatal("a frame that is not IPv4 was delivered")
		case [6]byte(frame[:6]) != [6]byte{}:
			t.Fatalf("a frame for MAC %x was delivered", frame[:6])
		case frame[23] != 6 && frame[23] != 17:
			t.Fatalf("protocol %d delivered", frame[23])
		case !src.Equal(fzPeer):
			t.Fatalf("a frame from %v was delivered to %v", src, dst)
		case !dst.Equal(fzPod) && !dst.Equal(fzOpen):
			t.Fatalf("delivered to %v, which is not an endpoint", dst)
		case dst.Equal(fzPod):
			ihl := int(frame[14]&0x0f) * 4
			if frame[23] != 6 || len(frame) < 14+ihl+4 || binary.BigEndian.Uint16(frame[14+ihl+2:]) != fzPodPort {
				t.Fatalf("delivered to the enforcing pod outside its allow (protocol %d)", frame[23])
			}
		}
	})
}

const reasonTunnelSource = 8

// The overlay runner reaches from_overlay with the tunnel key it was given
// (so that the fuzz targets judge from_overlay, not a failed key lookup):
// the remote pod's SYN to port 80 from its node is delivered, the same
// frame from another outer source or with another VNI is dropped.
func TestOverlayRunner(t *testing.T) {
	x := loadFuzz(t)
	node := binary.BigEndian.Uint32(fzNode)
	frame := tcpPacket(t, fzPeer, fzPod, 40000, 80, true, false)
	for _, c := range []struct {
		outer, vni, want uint32
		reason           uint32
	}{{node, fzPeerID, actRedirect, reasonForwarded}, {node + 1, fzPeerID, actShot, reasonTunnelSource}, {node, 2, actShot, reasonDenied}} {
		var p [8]byte
		binary.NativeEndian.PutUint32(p[:], c.outer)
		binary.NativeEndian.PutUint32(p[4:], c.vni)
		if err := x.params.Put(uint32(0), p[:]); err != nil {
			t.Fatal(err)
		}
		before := x.count(t, c.reason)
		if v, _ := x.run(t, x.overlay, frame); v != c.want || x.count(t, c.reason) != before+1 {
			t.Fatalf("outer %#x VNI %#x: verdict %d (want %d), reason %d counted %d -> %d", c.outer, c.vni, v, c.want, c.reason, before, x.count(t, c.reason))
		}
	}
}

// With encryption on, VXLAN from an encryption peer's address is dropped
// as forged (a peer sends through the WireGuard device, so the outer
// source of such a datagram is not the peer: anyone on the underlay who
// can forge it would speak as the VNI's identity), and under strict mode
// VXLAN from a node that is not a peer is dropped too; without strict
// mode a node that is not a peer yet still speaks VXLAN. Found 2026-12-06
// by reading from_overlay: it checked only that the outer source was a
// known node, so tunnel mode with WireGuard, strict included, accepted a
// forged VXLAN datagram with any identity.
func TestOverlayRefusesClearFromEncryptionPeers(t *testing.T) {
	x := loadFuzz(t)
	const reasonForgedSource, reasonNoEncryptPeer = 15, 11
	node := binary.BigEndian.Uint32(fzNode)
	var p [8]byte
	binary.NativeEndian.PutUint32(p[:], node)
	binary.NativeEndian.PutUint32(p[4:], fzPeerID)
	if err := x.params.Put(uint32(0), p[:]); err != nil {
		t.Fatal(err)
	}
	frame := tcpPacket(t, fzPeer, fzPod, 40000, 80, true, false)
	nk, one := ip4(fzNode), uint32(1)
	for _, c := range []struct {
		name    string
		encrypt uint32
		peer    bool
		want    uint32
		reason  uint32
	}{
		{"encryption off", 0, false, actRedirect, reasonForwarded},
		{"on, the node a peer", 1, true, actShot, reasonForgedSource},
		{"strict, the node a peer", 3, true, actShot, reasonForgedSource},
		{"strict, the node not a peer yet", 3, false, actShot, reasonNoEncryptPeer},
		{"on, the node not a peer yet", 1, false, actRedirect, reasonForwarded},
	} {
		putConfig(t, x.objs.Config, DatapathNodeConfig{Encrypt: c.encrypt})
		if c.peer {
			if err := x.objs.EncryptPeers.Put(&nk, &one); err != nil {
				t.Fatal(err)
			}
		} else {
			x.objs.EncryptPeers.Delete(&nk)
		}
		before := x.count(t, c.reason)
		if v, _ := x.run(t, x.overlay, frame); v != c.want || x.count(t, c.reason) != before+1 {
			t.Errorf("%s: verdict %d (want %d), reason %d counted %d -> %d", c.name, v, c.want, c.reason, before, x.count(t, c.reason))
		}
	}
}

func (x *fuzzFixture) count(t *testing.T, reason uint32) uint64 {
	key := reason*2 + dirIngress
	var per []DatapathCounter
	if err := x.objs.Counters.Lookup(&key, &per); err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, c := range per {
		n += c.Packets
	}
	return n
}
