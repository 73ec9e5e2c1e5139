package policy

import (
	"net/netip"
	"testing"

	"github.com/filament-net/filament/agent/policy/api"
)

// toFQDNs never allows a node's address, even when a node selector
// (toNodes, anywhere) has given it a CIDR identity: a pod answered with a
// node's address by a DNS server it may ask got an egress allow to that
// node on the section's ports (kubelet, node-exporter). Found 2026-12-06
// by reading fqdnAllows: the agent's filter keeps addresses whose ipcache
// identity is not local out of the cache, and a selected node's address
// is local-scope; the order of the answer and the selector does not
// matter, nor a policy import after both.
func TestFQDNNeverAllowsANode(t *testing.T) {
	const fqdnRule = `
  - toFQDNs: [{matchName: x.corp.test}]
    toPorts: [{ports: [{port: "10250", protocol: TCP}]}]
`
	node := netip.MustParsePrefix("172.30.0.2/32")
	other := netip.MustParseAddr("198.51.100.9")
	fqdnKey := api.FQDNKey(api.FQDNSelector{MatchName: "x.corp.test"})
	for _, fqdnFirst := range []bool{false, true} {
		ps, r := nodesAndB(t, fqdnRule)
		nodeKey := nodeKeyOf(r)
		learn := func() { r.SetFQDN(fqdnKey, map[netip.Addr][]uint16{node.Addr(): {2}, other: {2}}, 0) }
		if fqdnFirst {
			learn()
		}
		r.SetGroup(nodeKey, []netip.Addr{node.Addr()})
		if !fqdnFirst {
			learn()
		}
		for _, how := range []string{"as learned", "after an import"} {
			if how == "after an import" {
				r.SetPolicies(ps)
			}
			id := r.CIDRIdentities()[node]
			if id == 0 {
				t.Fatal("no CIDR identity for the selected node")
			}
			if ok, _ := dpVerdict(mustEP(t, r, 2), Egress, id, 6, 10250); ok {
				t.Errorf("answer first %v, %s: the pod may reach the node on 10250 through toFQDNs", fqdnFirst, how)
			}
			if ok, _ := dpVerdict(mustEP(t, r, 2), Egress, r.CIDRIdentities()[netip.PrefixFrom(other, 32)], 6, 10250); !ok {
				t.Errorf("answer first %v, %s: the name's other address is not allowed", fqdnFirst, how)
			}
		}
	}
}
