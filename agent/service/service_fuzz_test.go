package service_test

import (
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
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

// FuzzFailoverAnnotation feeds hostile values to the cluster-mesh
// annotations, service.filament.io/failover among them. Parse must refuse
// with ErrInvalid and an error naming the failover annotation and quoting
// its value whenever that is the only bad one, and an accepted graded
// service is always global with affinity local.
func FuzzFailoverAnnotation(f *testing.F) {
	f.Add("true", "local", "graded", true)
	f.Add("true", "Local", "graded", true)
	f.Add("true", "remote", "graded", true)
	f.Add("false", "local", "graded", true)
	f.Add("true", "local", "Graded", true)
	f.Add("true", "local", "graded\x00", true)
	f.Add("true", "local", "", true)
	f.Add("true", "none", "", false)
	f.Fuzz(func(t *testing.T, global, affinity, failover string, withFailover bool) {
		ann := map[string]string{service.AnnotationGlobal: global, service.AnnotationAffinity: affinity}
		if withFailover {
			ann[service.AnnotationFailover] = failover
		}
		s := &service.Service{Metadata: service.Metadata{Name: "web", Annotations: ann},
			Spec: service.Spec{ClusterIP: "10.96.0.10", Ports: []service.Port{{Port: 80}}}}
		// Validate, as Parse does after decoding (the YAML decoder already
		// refuses control characters; the API's and the Kubernetes
		// watcher's services reach Validate with any bytes).
		if err := s.Validate(); err != nil {
			if !errors.Is(err, service.ErrInvalid) {
				t.Fatalf("Validate: %v", err)
			}
			okOthers := (global == "true" || global == "false") && slices.Contains([]string{"local", "remote", "none"}, strings.ToLower(affinity))
			if okOthers && withFailover && !strings.Contains(err.Error(), service.AnnotationFailover) {
				t.Fatalf("error %q does not name %s", err, service.AnnotationFailover)
			}
			if okOthers && withFailover && !strings.Contains(err.Error(), strconv.Quote(failover)) {
				t.Fatalf("error %q does not quote the value %q", err, failover)
			}
			return
		}
		got := s
		o := got.Options()
		if withFailover != (o.Failover == service.FailoverGraded) {
			t.Fatalf("failover %v %q accepted as %+v", withFailover, failover, o)
		}
		if o.Failover != "" && (failover != service.FailoverGraded || !o.Global || o.Affinity != service.AffinityLocal) {
			t.Fatalf("graded accepted with %+v (value %q)", o, failover)
		}
	})
}
