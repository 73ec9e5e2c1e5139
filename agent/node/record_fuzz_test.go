package node_test

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"testing"

	"github.com/filament-net/filament/agent/node"
)

// FuzzRecordDecode feeds arbitrary kvstore values to the node record
// decoding the registry's watch does (json.Unmarshal into node.Node). It
// must never panic, refuse what is not a JSON object, and a record it
// accepts must come back equal through the form it is published in.
func FuzzRecordDecode(f *testing.F) {
	f.Fuzz(func(t *testing.T, value []byte) {
		var n node.Node
		if err := json.Unmarshal(value, &n); err != nil {
			return
		}
		if !json.Valid(value) {
			t.Fatalf("invalid JSON decoded as a node record: %q", value)
		}
		if ip := n.IP(); ip.IsValid() && (len(n.IPs) == 0 || netip.MustParseAddr(n.IPs[0]) != ip) {
			t.Fatalf("IP() = %v from %q", ip, n.IPs)
		}
		b, err := json.Marshal(n)
		if err != nil {
			t.Fatalf("a decoded record does not marshal: %v", err)
		}
		var back node.Node
		if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(normal(back), normal(n)) {
			t.Fatalf("record changes when published again (%v):\n got %#v\nwant %#v", err, back, n)
		}
	})
}

// normal treats nil and empty slices and maps alike: JSON keeps one of them.
func normal(n node.Node) node.Node {
	if len(n.IPs) == 0 {
		n.IPs = nil
	}
	if len(n.PodCIDRs) == 0 {
		n.PodCIDRs = nil
	}
	if len(n.Labels) == 0 {
		n.Labels = nil
	}
	return n
}
