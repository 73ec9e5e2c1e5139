package ipcache

import (
	"encoding/json"
	"errors"
	"net/netip"
	"testing"
)

// Entries a hostile kvstore writer can make (found while writing the fuzz
// targets: without an address, or with an IPv6 one, an entry crashed every
// agent) are refused by name.
func TestEntryCheck(t *testing.T) {
	key := netip.MustParseAddr("10.244.1.5")
	for _, c := range []struct {
		name, value string
		key         netip.Addr
		ok          bool
	}{
		{"good", `{"ip":"10.244.1.5","identity":65793,"hostIP":"172.30.0.2","node":"n2"}`, key, true},
		{"no ip", `{"identity":65793,"node":"n2"}`, key, false},
		{"ipv6", `{"ip":"fd00::5","identity":65793,"node":"n2"}`, netip.MustParseAddr("fd00::5"), false},
		{"other key", `{"ip":"10.244.0.9","identity":65793,"node":"n2"}`, key, false},
		{"ipv6 host", `{"ip":"10.244.1.5","identity":65793,"hostIP":"fd00::1","node":"n2"}`, key, false},
		{"no node", `{"ip":"10.244.1.5","identity":65793}`, key, false},
		// Names shown to operators (Hubble flows name a remote pod from
		// its entry): control characters, a terminal's CSI, a bidi
		// override, by JSON escape (found 2026-12-07: only lengths were
		// checked, and the flows carried them raw).
		{"pod with ESC", `{"ip":"10.244.1.5","identity":65793,"node":"n2","namespace":"prod","pod":"web\u001b]0;owned\u0007"}`, key, false},
		{"pod with CSI", `{"ip":"10.244.1.5","identity":65793,"node":"n2","namespace":"prod","pod":"web\u009b2J"}`, key, false},
		{"pod with bidi", `{"ip":"10.244.1.5","identity":65793,"node":"n2","namespace":"prod","pod":"web\u202e"}`, key, false},
		{"pod uppercase", `{"ip":"10.244.1.5","identity":65793,"node":"n2","namespace":"prod","pod":"Web"}`, key, false},
		{"namespace with newline", `{"ip":"10.244.1.5","identity":65793,"node":"n2","namespace":"prod\nx","pod":"web"}`, key, false},
		{"node with ESC", `{"ip":"10.244.1.5","identity":65793,"node":"n2\u001b[2J"}`, key, false},
		{"names", `{"ip":"10.244.1.5","identity":65793,"node":"n2","namespace":"prod","pod":"web-7d9f.x"}`, key, true},
	} {
		var e Entry
		if err := json.Unmarshal([]byte(c.value), &e); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		err := e.Check(c.key)
		if c.ok != (err == nil) || (err != nil && !errors.Is(err, ErrInvalid)) {
			t.Errorf("%s: Check = %v, want ok=%v", c.name, err, c.ok)
		}
	}
}
