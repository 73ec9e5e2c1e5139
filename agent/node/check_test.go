package node

import (
	"errors"
	"strings"
	"testing"
)

// A node record with an IPv6 address crashed every agent that learned it
// (found while writing the fuzz targets); records are checked on the way in.
func TestRecordCheck(t *testing.T) {
	good := `{"name":"n2","ips":["172.30.0.2"],"podCIDRs":["10.244.1.0/24"]}`
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
	} {
		var n Node
		err := decodeRecord([]byte(c.value), c.key, &n)
		if !errors.Is(err, ErrInvalidRecord) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrInvalidRecord naming %s", c.value, err, c.want)
		}
	}
}
