package bpf

import (
	"net"
	"net/netip"
	"testing"

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
	syn := tcpWith(t, peerIP, nodeIP, sport, fe, func(l *layers.TCP) { l.Seq, l.SYN = 1000, true })
	before := f.count(reasonNoProxy, dirIngress)
	// No proxy listens in a test run: steered, the SYN is dropped as such.
	if ret := f.run(f.objs.FromNetdev, syn); ret != actShot || f.count(reasonNoProxy, dirIngress) != before+1 {
		t.Fatalf("SYN to the NodePort of a local backend with an L7 rule: verdict %d, no-proxy drops %d -> %d; want steered to the proxy",
			ret, before, f.count(reasonNoProxy, dirIngress))
	}
	fk := DatapathProxyOriginKey{Saddr: ip4(peerIP), Daddr: ip4(nodeIP), Sport: htons(sport), Dport: htons(fe)}
	var b DatapathProxyBackend
	if err := f.objs.ProxyFrontends.Lookup(&fk, &b); err != nil {
		t.Fatalf("the backend given to the connection, for the proxy: %v", err)
	}
	if b.Addr != ip4(podIP) || htons(b.Port) != be {
		t.Fatalf("proxy_frontends: %+v, want the backend %v:%d", b, podIP, be)
	}
	var nk DatapathLbNatKey
	var nv DatapathLbNat
	if f.objs.LbNats.Iterate().Next(&nk, &nv) {
		t.Fatalf("a translation was made (%+v): the proxy's connection needs none", nk)
	}
	// A deny for the client wins: no proxy, the flow is translated and
	// to_container drops it.
	if err := f.objs.Policy.Put(&k, &DatapathPolicyValue{Deny: 1}); err != nil {
		t.Fatal(err)
	}
	f.bump()
	if ret, out := f.runOut(f.objs.FromNetdev, tcpWith(t, peerIP, nodeIP, sport+1, fe, func(l *layers.TCP) { l.Seq, l.SYN = 1000, true })); ret != actOK {
		t.Fatalf("denied: verdict %d, want translated (to_container drops it)", ret)
	} else if dst, port := destination(t, out); !dst.Equal(podIP) || port != be {
		t.Fatalf("denied: to %s:%d, want translated to the backend", dst, port)
	}
}
