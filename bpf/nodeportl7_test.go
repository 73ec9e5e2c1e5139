package bpf

import (
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket/layers"
)

// A NodePort connection whose backend is a pod of this node with ingress
// L7 rules on the backend's port goes to the node's proxy as it came (to
// the frontend, untranslated), the backend it was given left for the
// proxy in proxy_frontends: the proxy answers from the frontend's
// address and dials the backend itself. Until 2026-12-06 from_netdev
// translated it like any flow and to_container dropped it as going
// around the proxy: no such connection ever worked.
func TestNodePortLocalBackendWithL7GoesToTheProxy(t *testing.T) {
	const (
		fe, be, sport = 30090, 8080, 40000
		reasonNoProxy = 13
	)
	nodeIP := net.IPv4(192, 168, 7, 1).To4()
	f := load(t)
	f.lbService(1, nodeIP, fe, 6, lbFlagNodePort, netip.AddrPortFrom(netip.AddrFrom4([4]byte(podIP)), be))
	k := DatapathPolicyKey{Prefixlen: 64 + 24, EpId: podEP, Dir: dirIngress, Identity: peerID, Proto: 6, Port: [2]uint8{be >> 8, be & 0xff}}
	if err := f.objs.Policy.Put(&k, &DatapathPolicyValue{ProxyPort: 15001}); err != nil {
		t.Fatal(err)
	}
	syn := func(sport uint16) []byte {
		return tcpWith(t, peerIP, nodeIP, sport, fe, func(l *layers.TCP) { l.Seq, l.SYN = 1000, true })
	}
	frontendEntry := func(sport uint16) (DatapathProxyBackend, bool) {
		fk := DatapathProxyOriginKey{Saddr: ip4(peerIP), Daddr: ip4(nodeIP), Sport: htons(sport), Dport: htons(fe)}
		var b DatapathProxyBackend
		return b, f.objs.ProxyFrontends.Lookup(&fk, &b) == nil
	}
	noTranslation := func(what string) {
		t.Helper()
		f.natEach(func(_ *ebpf.Map, nk DatapathLbNatKey, _ DatapathLbNat) {
			t.Fatalf("%s: a translation was made (%+v): the proxy's connection needs none", what, nk)
		})
	}
	// No proxy listens: steered, the SYN is dropped as such, and leaves
	// no entry behind.
	before := f.count(reasonNoProxy, dirIngress)
	if ret := f.run(f.objs.FromNetdev, syn(sport)); ret != actShot || f.count(reasonNoProxy, dirIngress) != before+1 {
		t.Fatalf("SYN to the NodePort of a local backend with an L7 rule: verdict %d, no-proxy drops %d -> %d; want steered to the proxy",
			ret, before, f.count(reasonNoProxy, dirIngress))
	}
	if b, ok := frontendEntry(sport); ok {
		t.Fatalf("a SYN the proxy could not take left its backend in proxy_frontends: %+v", b)
	}
	noTranslation("no proxy")
	// (A test run cannot assign a socket: the steered SYN that the proxy
	// takes, and its entry, are the lab's TestL7NodePort.) A SYN whose
	// tuple went to the proxy less than a minute ago (its entry is there:
	// the proxy has not accepted the connection yet) goes to the proxy
	// again with the backend it was given, even after the policy lost
	// the L7 rule: not translated behind the half-open connection's back.
	if err := f.objs.Policy.Put(&k, &DatapathPolicyValue{}); err != nil {
		t.Fatal(err)
	}
	f.bump()
	fk := DatapathProxyOriginKey{Saddr: ip4(peerIP), Daddr: ip4(nodeIP), Sport: htons(sport + 1), Dport: htons(fe)}
	pending := DatapathProxyBackend{Addr: ip4(podIP), Port: htons(be), ProxyPort: 15001, At: monotonic(t) - 1e9}
	if err := f.objs.ProxyFrontends.Put(&fk, &pending); err != nil {
		t.Fatal(err)
	}
	before = f.count(reasonNoProxy, dirIngress)
	if ret := f.run(f.objs.FromNetdev, syn(sport+1)); ret != actShot || f.count(reasonNoProxy, dirIngress) != before+1 {
		t.Fatalf("the SYN again, its first steered a second ago: verdict %d, want steered where the first went", ret)
	}
	noTranslation("the SYN again")
	// One whose entry is older than a SYN's life is judged anew.
	pending.At = monotonic(t) - 61e9
	if err := f.objs.ProxyFrontends.Put(&fk, &pending); err != nil {
		t.Fatal(err)
	}
	if ret, out := f.runOut(f.objs.FromNetdev, syn(sport+1)); ret != actOK {
		t.Fatalf("a SYN whose entry is a minute old: verdict %d, want translated (no L7 rule now)", ret)
	} else if dst, port := destination(t, out); !dst.Equal(podIP) || port != be {
		t.Fatalf("a SYN whose entry is a minute old: to %s:%d, want translated to the backend", dst, port)
	}
	f.natDelete(DatapathLbNatKey{Saddr: ip4(peerIP), Daddr: ip4(nodeIP), Sport: htons(sport + 1), Dport: htons(fe), Proto: 6})
	// A deny for the client wins: no proxy, the flow is translated and
	// to_container drops it.
	if err := f.objs.Policy.Put(&k, &DatapathPolicyValue{Deny: 1}); err != nil {
		t.Fatal(err)
	}
	f.bump()
	if ret, out := f.runOut(f.objs.FromNetdev, syn(sport+2)); ret != actOK {
		t.Fatalf("denied: verdict %d, want translated (to_container drops it)", ret)
	} else if dst, port := destination(t, out); !dst.Equal(podIP) || port != be {
		t.Fatalf("denied: to %s:%d, want translated to the backend", dst, port)
	}
}
