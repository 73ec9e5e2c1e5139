package proxy

import (
	"net/netip"
	"testing"
)

// Topic IDs are learned per broker cluster identity only where that
// identity is one workload's: a remote cluster's cover identity (sparse
// remote ipcache: every pod of the cluster not told apart) stands for all
// its pods, so one of them answering Metadata must not name IDs for the
// real brokers; such addresses are scoped one by one, as the world's are.
// Found 2026-12-06 by reading kafkaScopeOf: a pod of a remote cluster
// could map a secret topic's ID to an allowed name for the brokers of its
// cluster.
func TestKafkaScopeOfCoverIsTheAddress(t *testing.T) {
	cfg, err := compile(Config{IPCache: []IPCacheEntry{
		{Prefix: netip.MustParsePrefix("10.9.0.0/16"), Identity: 3<<16 | 1},   // cluster 3's cover
		{Prefix: netip.MustParsePrefix("10.7.0.0/16"), Identity: 3<<15 | 1},   // with 511 clusters (cluster ID from bit 15)
		{Prefix: netip.MustParsePrefix("10.9.7.7/32"), Identity: 3<<16 | 300}, // one of its pods told apart
		{Prefix: netip.MustParsePrefix("10.9.7.8/32"), Identity: 3<<16 | 300}, // another of the same identity
	}})
	if err != nil {
		t.Fatal(err)
	}
	ap := func(s string) netip.AddrPort { return netip.AddrPortFrom(netip.MustParseAddr(s), 9092) }
	if a, b := kafkaScopeOf(cfg, ap("10.9.0.5")), kafkaScopeOf(cfg, ap("10.9.0.6")); a == b {
		t.Errorf("two pods under the cover share the scope %+v", a)
	}
	if a, b := kafkaScopeOf(cfg, ap("10.7.0.5")), kafkaScopeOf(cfg, ap("10.7.0.6")); a == b {
		t.Errorf("two pods under a cover of the 511-cluster layout share the scope %+v", a)
	}
	if a, b := kafkaScopeOf(cfg, ap("10.9.7.7")), kafkaScopeOf(cfg, ap("10.9.7.8")); a != b || a.identity != 3<<16|300 {
		t.Errorf("two brokers of one identity: scopes %+v and %+v, want the identity's", a, b)
	}
}

// A server outside the cluster is scoped by its address and port: one
// address may front several services (a load balancer, a NAT'd host), and
// a server on another port of it must not name topic IDs for the brokers
// on 9092. Found 2026-12-06 by reading kafkaScopeOf (the scope was the
// address alone).
func TestKafkaScopeOfOutsideServerIsAddressAndPort(t *testing.T) {
	cfg, err := compile(Config{})
	if err != nil {
		t.Fatal(err)
	}
	broker := kafkaScopeOf(cfg, netip.MustParseAddrPort("203.0.113.9:9092"))
	other := kafkaScopeOf(cfg, netip.MustParseAddrPort("203.0.113.9:19092"))
	if broker == other {
		t.Errorf("two ports of one outside address share the scope %+v", broker)
	}
	if again := kafkaScopeOf(cfg, netip.MustParseAddrPort("[::ffff:203.0.113.9]:9092")); again != broker {
		t.Errorf("the v4-mapped form of the broker's address: scope %+v, want %+v", again, broker)
	}
}
