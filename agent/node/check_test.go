package node

import (
	"errors"
	"strings"
	"testing"
)

// A node record with an IPv6 address crashed every agent that learned it
// (found while writing the fuzz targets); records are checked on the way in.
func TestRecordCheck(t *testing.T) {
	good := `{"name":"n2","ips":["172.30.0.2"],"podCIDRs":["10.244.1.0/24"],"localAddrs":["198.18.7.2","192.168.1.5"]}`
	var n Node
	if err := decodeRecord([]byte(good), "n2", &n); err != nil {
		t.Fatalf("good record: %v", err)
	}
	for _, c := range []struct{ value, key, want string }{
		{`{"name":"evil","ips":["fd00::1"]}`, "evil", `ips[0] "fd00::1"`},
		{`{"name":"evil","ips":["nope"]}`, "evil", `ips[0] "nope"`},
		{`{"name":"evil","podCIDRs":["fd00::/64"]}`, "evil", `podCIDRs[0] "fd00::/64"`},
		{`{"name":"n3","ips":["172.30.0.3"]}`, "n2", `record of "n3" under the key of "n2"`},
		{`{"ips":["172.30.0.3"]}`, "", "no name"},
		// Every node of the mesh rewrites a route, an allowed IP and
		// XFRM policies per pod CIDR at each change of the record: a
		// record with 100,000 of them cost every node that much, under
		// the router's lock, at each rewrite.
		{`{"name":"n9","ips":["172.30.0.9"],"podCIDRs":[` + strings.TrimSuffix(strings.Repeat(`"10.9.0.0/32",`, MaxPodCIDRs+1), ",") + `]}`, "n9", "podCIDRs: 17"},
		{`{"name":"n9","ips":[` + strings.TrimSuffix(strings.Repeat(`"10.9.0.1",`, MaxIPs+1), ",") + `]}`, "n9", "ips: 17"},
		// Other addresses: each is an entry of every node's
		// node_local_addrs map, and only unicast addresses a node can
		// have (loopback's and link-local ones every node has).
		{`{"name":"n9","localAddrs":[` + strings.TrimSuffix(strings.Repeat(`"10.9.0.1",`, MaxLocalAddrs+1), ",") + `]}`, "n9", "localAddrs: 17"},
		{`{"name":"n9","localAddrs":["127.0.0.1"]}`, "n9", `localAddrs[0] "127.0.0.1"`},
		{`{"name":"n9","localAddrs":["10.0.0.1","169.254.1.1"]}`, "n9", `localAddrs[1] "169.254.1.1"`},
		{`{"name":"n9","localAddrs":["224.0.0.1"]}`, "n9", `localAddrs[0] "224.0.0.1"`},
		{`{"name":"n9","localAddrs":["255.255.255.255"]}`, "n9", `localAddrs[0] "255.255.255.255"`},
		{`{"name":"n9","localAddrs":["0.1.2.3"]}`, "n9", `localAddrs[0] "0.1.2.3"`},
		{`{"name":"n9","localAddrs":["fd00::1"]}`, "n9", `localAddrs[0] "fd00::1"`},
		{`{"name":"n9","localAddrs":["10.0.0.0/8"]}`, "n9", `localAddrs[0] "10.0.0.0/8"`},
	} {
		var n Node
		err := decodeRecord([]byte(c.value), c.key, &n)
		if !errors.Is(err, ErrInvalidRecord) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrInvalidRecord naming %s", c.value, err, c.want)
		}
	}
}
