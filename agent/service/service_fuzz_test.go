package service_test

import (
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
	"testing"

	"github.com/filament-net/filament/agent/service"
)

// FuzzParse feeds arbitrary documents to service.Parse (the API's and the
// CLI's upsert). It must never panic, refuse with ErrInvalid, and an
// accepted service must validate again unchanged, come back equal through
// its JSON form (how it is stored), and yield only frontends and backends
// in unicast space (never loopback, multicast, link-local or unspecified:
// those would capture the node's own traffic).
func FuzzParse(f *testing.F) {
	nodeIPs := []netip.Addr{netip.MustParseAddr("172.30.1.1")}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := service.Parse(data)
		if err != nil {
			if s != nil || !errors.Is(err, service.ErrInvalid) {
				t.Fatalf("Parse: service %v with error %v (want nil and ErrInvalid)", s, err)
			}
			return
		}
		again := *s
		if err := again.Validate(); err != nil || !reflect.DeepEqual(&again, s) {
			t.Fatalf("an accepted service does not validate again unchanged: %v\n got %#v\nwant %#v", err, again, *s)
		}
		b, err := json.Marshal(s)
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		back, err := service.Parse(b)
		if err != nil || !reflect.DeepEqual(back, s) {
			t.Fatalf("%s changes through its JSON form: %v\n got %#v\nwant %#v\n%s", s.Key(), err, back, s, b)
		}
		for _, fe := range s.Frontends(nodeIPs) {
			if special(fe.IP) {
				t.Fatalf("%s has frontend %s", s.Key(), fe)
			}
		}
		for _, be := range s.Backends {
			if special(netip.MustParseAddr(be.IP)) {
				t.Fatalf("%s has backend %s", s.Key(), be.IP)
			}
		}
	})
}

func special(a netip.Addr) bool {
	return !a.Is4() || a.IsLoopback() || a.IsMulticast() || a.IsLinkLocalUnicast() || a.IsUnspecified() || a == netip.IPv4Unspecified() ||
		a == netip.AddrFrom4([4]byte{255, 255, 255, 255})
}
