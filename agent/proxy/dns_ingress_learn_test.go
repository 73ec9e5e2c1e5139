package proxy

import (
	"testing"
	"time"

	"github.com/miekg/dns"
)

// What a client learns for toFQDNs is decided by its own egress DNS rules:
// a server pod's ingress DNS rule (any port, `matchPattern: "*"`) allows
// the exchange, and until 2026-12-07 taught the client any address the
// server answered for a name its toFQDNs selects, although the client's
// own rules allowed it to ask only its cluster's DNS server (found by a
// review). The exchange is forwarded and recorded; nothing is learned.
// With the client's egress rule on that port too, it is.
func TestIngressDNSRuleTeachesTheClientNothing(t *testing.T) {
	h := newDNSHarness(t, Options{})
	const kubeDNS = 7000
	own := []PeerRules{{Remotes: []uint32{kubeDNS}, DNS: []DNSRule{{MatchPattern: "*.allowed.test"}}}}
	server := []PeerRules{{DNS: []DNSRule{{MatchPattern: "*"}}}}
	policies := []PortPolicy{
		{Endpoint: clientIP, Direction: Egress, Port: 53, Protocol: "UDP", Kind: KindDNS, Rules: own},
		{Endpoint: serverIP, Direction: Ingress, Port: h.server.Port(), Protocol: "UDP", Kind: KindDNS, Rules: server},
	}
	if err := h.p.SetConfig(Config{Revision: 2, IPCache: ipcache, FQDNs: []DNSRule{{MatchPattern: "*.allowed.test"}}, Policies: policies}); err != nil {
		t.Fatal(err)
	}
	learned, session, stop := h.p.learner.follow()
	defer stop()
	if a := h.ask("udp", "api.allowed.test."); a.Rcode != dns.RcodeSuccess {
		t.Fatalf("the server's own rule allows the exchange: answered %s", dns.RcodeToString[a.Rcode])
	}
	select {
	case x := <-learned:
		h.p.learner.ack(session, x.Seq)
		t.Errorf("learned for the client %v: %s -> %v, from a server its own DNS rules never allowed it to ask", x.Endpoint, x.Name, x.Addrs)
	case <-time.After(300 * time.Millisecond):
	}

	policies = append(policies, PortPolicy{Endpoint: clientIP, Direction: Egress, Port: h.server.Port(), Protocol: "UDP", Kind: KindDNS,
		Rules: []PeerRules{{DNS: []DNSRule{{MatchPattern: "*.allowed.test"}}}}})
	if err := h.p.SetConfig(Config{Revision: 3, IPCache: ipcache, FQDNs: []DNSRule{{MatchPattern: "*.allowed.test"}}, Policies: policies}); err != nil {
		t.Fatal(err)
	}
	// (Waited for before the test ends: its answer goes once learned, and
	// a query failing after the end failed the whole package.)
	asked := make(chan struct{})
	go func() { defer close(asked); h.ask("udp", "www.allowed.test.") }()
	defer func() { <-asked }()
	select {
	case x := <-learned:
		h.p.learner.ack(session, x.Seq)
		if x.Name != "www.allowed.test." {
			t.Errorf("learned %s", x.Name)
		}
	case <-time.After(3 * time.Second):
		t.Error("the client's own egress rule allowed the query, and nothing was learned")
	}
}
