package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/filament-net/filament/agent/datapath"
	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/internal/testutil"
)

const fakeMaglevSize = 251

// fakeDP records what the manager writes.
type fakeDP struct {
	mu    sync.Mutex
	svcs  map[datapath.Frontend]datapath.LBService
	calls []string
	fail  error // returned by UpsertService when set
}

func newFakeDP() *fakeDP { return &fakeDP{svcs: map[datapath.Frontend]datapath.LBService{}} }

func (f *fakeDP) UpsertService(fe datapath.Frontend, s datapath.LBService) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "upsert "+fe.String())
	if f.fail != nil {
		return f.fail
	}
	if s.Algorithm == datapath.AlgMaglev && len(s.Backends) > 0 && len(s.Maglev) != fakeMaglevSize {
		return fmt.Errorf("maglev table of %d slots", len(s.Maglev))
	}
	f.svcs[fe] = s
	return nil
}

func (f *fakeDP) DeleteService(fe datapath.Frontend) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "delete "+fe.String())
	delete(f.svcs, fe)
	return nil
}

func (f *fakeDP) Frontends() []datapath.Frontend {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Collect(maps.Keys(f.svcs))
}

func (f *fakeDP) MaglevSize() uint32 { return fakeMaglevSize }

func (f *fakeDP) snapshot() (map[datapath.Frontend]datapath.LBService, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.svcs), slices.Clone(f.calls)
}

// lbString renders the datapath state: one line per frontend.
func (f *fakeDP) lines() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for fe, s := range f.svcs {
		var b []string
		for _, x := range s.Backends {
			b = append(b, netip.AddrPortFrom(x.IP, x.Port).String())
		}
		l := fmt.Sprintf("%s [%s]", fe, strings.Join(b, " "))
		if s.NodePort {
			l += " nodeport"
		}
		if s.AffinityTimeout != 0 {
			l += fmt.Sprintf(" affinity=%d", s.AffinityTimeout)
		}
		if s.Algorithm == datapath.AlgMaglev {
			l += " maglev"
		}
		out = append(out, l)
	}
	slices.Sort(out)
	return out
}

var (
	node1 = netip.MustParseAddr("192.168.0.1")
	node2 = netip.MustParseAddr("192.168.0.2")
)

func newManager(t *testing.T, alg string) (*Manager, *fakeDP) {
	t.Helper()
	dp := newFakeDP()
	m, err := New(context.Background(), Config{Cluster: "c1", NodeIPs: []netip.Addr{node1, node2}, Algorithm: alg, Datapath: dp})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return m, dp
}

func mustParse(t *testing.T, yaml string) *Service {
	t.Helper()
	s, err := Parse([]byte(yaml))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return s
}

func upsert(t *testing.T, m *Manager, yaml string) {
	t.Helper()
	if err := m.Upsert(context.Background(), mustParse(t, yaml)); err != nil {
		t.Fatalf("Upsert: %v", err)
	}
}

func want(t *testing.T, dp *fakeDP, lines ...string) {
	t.Helper()
	got := dp.lines()
	if lines == nil {
		lines = []string{}
	}
	if got == nil {
		got = []string{}
	}
	if !reflect.DeepEqual(got, lines) {
		t.Errorf("datapath =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(lines, "\n"))
	}
}

const webYAML = `
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: dns, port: 53, protocol: UDP}
backends:
- {ip: 10.0.1.2, node: n2}
- {ip: 10.0.1.1, node: n1}
- {ip: 10.0.1.3, node: n3, state: terminating}
`

const npYAML = `
metadata: {name: np, namespace: prod}
spec:
  type: NodePort
  clusterIP: 10.96.0.20
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  ports:
  - {port: 80, targetPort: 8080, nodePort: 30080}
backends:
- {ip: 10.0.2.1, node: n1}
`

func TestNewAlgorithm(t *testing.T) {
	if _, err := New(context.Background(), Config{Algorithm: "roundrobin", Datapath: newFakeDP()}); err == nil {
		t.Error("New accepted algorithm roundrobin")
	}
	m, _ := newManager(t, "")
	if m.cfg.Algorithm != "random" {
		t.Errorf("default algorithm %q, want random", m.cfg.Algorithm)
	}
}

func TestManagerUpsert(t *testing.T) {
	m, dp := newManager(t, "")
	upsert(t, m, webYAML)
	want(t, dp,
		"10.96.0.10:53/udp [10.0.1.1:53 10.0.1.2:53]",
		"10.96.0.10:80/tcp [10.0.1.1:8080 10.0.1.2:8080]")
	svcs, _ := dp.snapshot()
	fe := datapath.Frontend{IP: netip.MustParseAddr("10.96.0.10"), Port: 80, Proto: unix.IPPROTO_TCP}
	// The terminating backend takes no new flows and keeps its own.
	wantLB := datapath.LBService{Backends: []datapath.LBBackend{
		{IP: netip.MustParseAddr("10.0.1.1"), Port: 8080}, {IP: netip.MustParseAddr("10.0.1.2"), Port: 8080}},
		Keep: []datapath.LBBackend{{IP: netip.MustParseAddr("10.0.1.3"), Port: 8080}}}
	if !reflect.DeepEqual(svcs[fe], wantLB) {
		t.Errorf("%s = %+v, want %+v", fe, svcs[fe], wantLB)
	}

	upsert(t, m, npYAML)
	want(t, dp,
		"10.96.0.10:53/udp [10.0.1.1:53 10.0.1.2:53]",
		"10.96.0.10:80/tcp [10.0.1.1:8080 10.0.1.2:8080]",
		"10.96.0.20:80/tcp [10.0.2.1:8080] affinity=600",
		"192.168.0.1:30080/tcp [10.0.2.1:8080] nodeport affinity=600",
		"192.168.0.2:30080/tcp [10.0.2.1:8080] nodeport affinity=600")

	st, err := m.Get("prod", "np")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if st.Namespace != "prod" || st.Name != "np" || st.Type != "NodePort" || st.Algorithm != "random" || st.AffinityTimeout != 600 {
		t.Errorf("status %+v", st)
	}
	if !reflect.DeepEqual(st.Clusters, []string{"c1"}) {
		t.Errorf("clusters %q, want [c1]", st.Clusters)
	}
	if len(st.Frontends) != 3 || st.Frontends[1].Type != "NodePort" || len(st.Frontends[1].Backends) != 1 ||
		st.Frontends[1].Backends[0].Cluster != "c1" {
		t.Errorf("frontends %+v", st.Frontends)
	}
	if st.Spec == nil || st.Spec.Backends[0].Cluster != "c1" {
		t.Errorf("status spec %+v: backends should carry the local cluster", st.Spec)
	}
	if m.Errors() != 0 {
		t.Errorf("Errors() = %d", m.Errors())
	}
}

func TestManagerUpdate(t *testing.T) {
	m, dp := newManager(t, "")
	upsert(t, m, webYAML)
	_, calls0 := dp.snapshot()

	// New backends: the same frontends, rewritten in place.
	upsert(t, m, strings.Replace(webYAML, "- {ip: 10.0.1.1, node: n1}", "- {ip: 10.0.1.9, node: n1}", 1))
	want(t, dp,
		"10.96.0.10:53/udp [10.0.1.2:53 10.0.1.9:53]",
		"10.96.0.10:80/tcp [10.0.1.2:8080 10.0.1.9:8080]")
	_, calls := dp.snapshot()
	for _, c := range calls[len(calls0):] {
		if strings.HasPrefix(c, "delete") {
			t.Errorf("updating backends deleted a frontend: %s", c)
		}
	}

	// A backend starts terminating and leaves the slots.
	upsert(t, m, strings.Replace(webYAML, "{ip: 10.0.1.2, node: n2}", "{ip: 10.0.1.2, node: n2, state: maintenance}", 1))
	want(t, dp,
		"10.96.0.10:53/udp [10.0.1.1:53]",
		"10.96.0.10:80/tcp [10.0.1.1:8080]")

	// A port goes away and another comes: the old frontend is deleted.
	upsert(t, m, strings.Replace(webYAML, "{name: dns, port: 53, protocol: UDP}", "{name: dns, port: 5353, protocol: UDP}", 1))
	want(t, dp,
		"10.96.0.10:5353/udp [10.0.1.1:5353 10.0.1.2:5353]",
		"10.96.0.10:80/tcp [10.0.1.1:8080 10.0.1.2:8080]")
	_, calls = dp.snapshot()
	if !slices.Contains(calls, "delete 10.96.0.10:53/udp") {
		t.Errorf("old frontend not deleted; calls %q", calls)
	}

	// No backends at all: the frontends stay, empty.
	upsert(t, m, webYAML[:strings.Index(webYAML, "backends:")])
	want(t, dp, "10.96.0.10:53/udp []", "10.96.0.10:80/tcp []")
}

func TestManagerDelete(t *testing.T) {
	m, dp := newManager(t, "")
	upsert(t, m, webYAML)
	upsert(t, m, npYAML)
	ctx := context.Background()
	if err := m.Delete(ctx, "prod", "np"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	want(t, dp,
		"10.96.0.10:53/udp [10.0.1.1:53 10.0.1.2:53]",
		"10.96.0.10:80/tcp [10.0.1.1:8080 10.0.1.2:8080]")
	if _, err := m.Get("prod", "np"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after Delete: %v, want ErrNotFound", err)
	}
	if err := m.Delete(ctx, "prod", "np"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Delete: %v, want ErrNotFound", err)
	}
	if err := m.Delete(ctx, "default", "np"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Delete in the wrong namespace: %v, want ErrNotFound", err)
	}
	if err := m.Delete(ctx, "default", "web"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	want(t, dp)
	if l := m.List(); len(l) != 0 {
		t.Errorf("List after deleting everything: %+v", l)
	}
	// The nodePort and the ClusterIP are free again.
	upsert(t, m, strings.Replace(npYAML, "name: np,", "name: np2,", 1))
}

// At names the service of a frontend (its ClusterIP or a NodePort, by
// protocol too) while the frontend is applied, and nothing once it goes.
func TestManagerAt(t *testing.T) {
	m, _ := newManager(t, "")
	upsert(t, m, webYAML)
	upsert(t, m, npYAML)
	for _, tc := range []struct {
		fe, proto, ns, name string
	}{
		{"10.96.0.10:80", "TCP", "default", "web"},
		{"10.96.0.10:53", "udp", "default", "web"},
		{"10.96.0.20:80", "TCP", "prod", "np"},
		{"192.168.0.2:30080", "TCP", "prod", "np"},
		{"10.96.0.10:53", "TCP", "", ""},  // no TCP frontend on 53
		{"10.96.0.10:81", "TCP", "", ""},  // no such port
		{"192.168.0.1:80", "TCP", "", ""}, // a node address, no NodePort there
	} {
		ns, name, ok := m.At(netip.MustParseAddrPort(tc.fe), tc.proto)
		if ns != tc.ns || name != tc.name || ok != (tc.name != "") {
			t.Errorf("At(%s %s) = %q %q %v, want %q %q", tc.fe, tc.proto, ns, name, ok, tc.ns, tc.name)
		}
	}
	if err := m.Delete(context.Background(), "prod", "np"); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := m.At(netip.MustParseAddrPort("192.168.0.1:30080"), "TCP"); ok {
		t.Error("a deleted service's NodePort is still named")
	}
	// A port that moves: the old frontend is no longer the service's.
	upsert(t, m, strings.Replace(webYAML, "{name: dns, port: 53, protocol: UDP}", "{name: dns, port: 5353, protocol: UDP}", 1))
	if _, _, ok := m.At(netip.MustParseAddrPort("10.96.0.10:53"), "UDP"); ok {
		t.Error("a frontend the service left is still named")
	}
	if ns, name, ok := m.At(netip.MustParseAddrPort("10.96.0.10:5353"), "UDP"); !ok || ns != "default" || name != "web" {
		t.Errorf("the moved port: %q %q %v", ns, name, ok)
	}
}

func TestManagerConflict(t *testing.T) {
	tests := []struct {
		name     string
		yaml     string
		conflict bool
	}{
		{"same clusterIP and port", strings.Replace(webYAML, "name: web", "name: other", 1), true},
		{"same clusterIP and port, other namespace", strings.Replace(webYAML, "name: web}", "name: web, namespace: other}", 1), true},
		{"same clusterIP and port, other targetPort", `
metadata: {name: other}
spec: {clusterIP: 10.96.0.10, ports: [{port: 53, protocol: UDP, targetPort: 9053}]}`, true},
		{"same clusterIP and port, as NodePort type", `
metadata: {name: other}
spec: {type: NodePort, clusterIP: 10.96.0.20, ports: [{port: 80, nodePort: 31000}]}`, true},
		{"same nodePort", `
metadata: {name: other}
spec: {type: NodePort, ports: [{port: 8080, nodePort: 30080}]}`, true},
		{"same clusterIP, other port", `
metadata: {name: other}
spec: {clusterIP: 10.96.0.10, ports: [{port: 81}]}`, false},
		{"same clusterIP and port, other protocol", `
metadata: {name: other}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80, protocol: UDP}]}`, false},
		{"same nodePort, other protocol", `
metadata: {name: other}
spec: {type: NodePort, ports: [{port: 8080, protocol: UDP, nodePort: 30080}]}`, false},
		{"the service itself", webYAML, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, dp := newManager(t, "")
			upsert(t, m, webYAML)
			upsert(t, m, npYAML)
			svcs0, calls0 := dp.snapshot()
			list0 := m.List()
			err := m.Upsert(context.Background(), mustParse(t, tc.yaml))
			if !tc.conflict {
				if err != nil {
					t.Fatalf("Upsert: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrConflict) {
				t.Fatalf("Upsert: %v, want ErrConflict", err)
			}
			svcs, calls := dp.snapshot()
			if !reflect.DeepEqual(svcs, svcs0) || !reflect.DeepEqual(calls, calls0) {
				t.Errorf("a conflicting Upsert touched the datapath: calls %q", calls[len(calls0):])
			}
			if !reflect.DeepEqual(m.List(), list0) {
				t.Errorf("a conflicting Upsert changed List()")
			}
		})
	}
}

// TestManagerConcurrentConflict: of services racing for one frontend,
// exactly one gets it.
func TestManagerConcurrentConflict(t *testing.T) {
	for round := range 200 {
		m, dp := newManager(t, "")
		const n = 8
		errs := make([]error, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			s := mustParse(t, fmt.Sprintf(`
metadata: {name: s%d}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
backends: [{ip: 10.0.0.%d}]`, i, i+1))
			wg.Go(func() {
				<-start
				errs[i] = m.Upsert(context.Background(), s)
			})
		}
		close(start)
		wg.Wait()
		ok := succeeded(t, errs)
		if ok != 1 || len(m.List()) != 1 {
			t.Fatalf("round %d: %d Upserts succeeded, List has %d, want 1 and 1", round, ok, len(m.List()))
		}
		svcs, _ := dp.snapshot()
		if len(svcs) != 1 {
			t.Fatalf("round %d: %d frontends", round, len(svcs))
		}
	}
}

// A frontend on a node's or the kvstore's address, or a backend on the
// kvstore's, would take the control plane's traffic: refused, naming the
// field, and the stored service stays as it was.
func TestManagerRejectsReserved(t *testing.T) {
	dp := newFakeDP()
	kv := netip.MustParseAddr("172.30.0.254")
	m, err := New(context.Background(), Config{Cluster: "c1", NodeIPs: []netip.Addr{node1}, Datapath: dp,
		Reserved: func(a netip.Addr) string {
			switch a {
			case kv:
				return "the cluster's kvstore"
			case node1:
				return "a node's address"
			}
			return ""
		},
		ControlPlane: func(a netip.Addr) string {
			if a == kv {
				return "the cluster's kvstore"
			}
			return ""
		}})
	if err != nil {
		t.Fatal(err)
	}
	upsert(t, m, webYAML)
	svcs0, _ := dp.snapshot()
	for _, c := range []struct {
		field string
		set   func(s *Service)
	}{
		{"spec.clusterIP 172.30.0.254: the cluster's kvstore", func(s *Service) { s.Spec.ClusterIP = kv.String() }},
		{"spec.clusterIP " + node1.String() + ": a node's address", func(s *Service) { s.Spec.ClusterIP = node1.String() }},
		{"backends[0].ip 172.30.0.254: the cluster's kvstore", func(s *Service) { s.Backends[0].IP = kv.String() }},
	} {
		s := mustParse(t, webYAML)
		c.set(s)
		err := m.Upsert(context.Background(), s)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.field) {
			t.Errorf("Upsert: %v, want ErrInvalid naming %q", err, c.field)
		}
	}
	if svcs, _ := dp.snapshot(); !reflect.DeepEqual(svcs, svcs0) {
		t.Error("a refused service changed the datapath")
	}
	// A node address as a backend is fine (host-network backends).
	s := mustParse(t, webYAML)
	s.Backends[0].IP = node1.String()
	if err := m.Upsert(context.Background(), s); err != nil {
		t.Errorf("node address as backend: %v", err)
	}
}

func TestManagerRejectsInvalid(t *testing.T) {
	m, dp := newManager(t, "")
	upsert(t, m, webYAML)
	svcs0, calls0 := dp.snapshot()
	list0 := m.List()
	unchanged := func(what string) {
		t.Helper()
		svcs, calls := dp.snapshot()
		if !reflect.DeepEqual(svcs, svcs0) || !reflect.DeepEqual(calls, calls0) {
			t.Errorf("%s: datapath touched: calls %q", what, calls[len(calls0):])
		}
		if !reflect.DeepEqual(m.List(), list0) {
			t.Errorf("%s: List() changed", what)
		}
	}

	bad := mustParse(t, webYAML)
	bad.Spec.Ports[0].Port = 0
	if err := m.Upsert(context.Background(), bad); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Upsert of port 0: %v, want ErrInvalid", err)
	}
	unchanged("port 0")

	bad = mustParse(t, webYAML)
	bad.Backends[0].IP = "not-an-ip"
	if err := m.Upsert(context.Background(), bad); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Upsert of a bad backend: %v, want ErrInvalid", err)
	}
	unchanged("bad backend")

	// The service passed to a successful Upsert, changed afterwards and
	// rejected, must not have changed the manager's copy either.
	s := mustParse(t, npYAML)
	if err := m.Upsert(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	svcs0, calls0 = dp.snapshot()
	list0 = m.List()
	s.Spec.Ports[0].NodePort = 80
	s.Backends[0].IP = "10.9.9.9"
	if err := m.Upsert(context.Background(), s); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Upsert of nodePort 80: %v, want ErrInvalid", err)
	}
	unchanged("caller's service changed after Upsert")
	if st, _ := m.Get("prod", "np"); st.Spec.Backends[0].IP != "10.0.2.1" || st.Spec.Spec.Ports[0].NodePort != 30080 {
		t.Errorf("stored service follows the caller's copy: %+v", st.Spec)
	}
}

func TestManagerNodeAlive(t *testing.T) {
	m, dp := newManager(t, "")
	upsert(t, m, webYAML)
	upsert(t, m, npYAML)
	all := []string{
		"10.96.0.10:53/udp [10.0.1.1:53 10.0.1.2:53]",
		"10.96.0.10:80/tcp [10.0.1.1:8080 10.0.1.2:8080]",
		"10.96.0.20:80/tcp [10.0.2.1:8080] affinity=600",
		"192.168.0.1:30080/tcp [10.0.2.1:8080] nodeport affinity=600",
		"192.168.0.2:30080/tcp [10.0.2.1:8080] nodeport affinity=600",
	}
	want(t, dp, all...)

	m.NodeAlive("c1", "n1", false)
	want(t, dp,
		"10.96.0.10:53/udp [10.0.1.2:53]",
		"10.96.0.10:80/tcp [10.0.1.2:8080]",
		"10.96.0.20:80/tcp [] affinity=600",
		"192.168.0.1:30080/tcp [] nodeport affinity=600",
		"192.168.0.2:30080/tcp [] nodeport affinity=600")
	st, _ := m.Get("default", "web")
	for _, b := range st.Frontends[0].Backends {
		if b.Node == "n1" && (b.Healthy || b.Preferred) {
			t.Errorf("backend on dead n1: %+v", b)
		}
		if b.Node == "n2" && (!b.Healthy || !b.Preferred) {
			t.Errorf("backend on live n2: %+v", b)
		}
	}

	// Saying it again changes nothing; another cluster's n1 is another node.
	_, calls0 := dp.snapshot()
	m.NodeAlive("c1", "n1", false)
	m.NodeAlive("c2", "n1", true)
	if _, calls := dp.snapshot(); len(calls) != len(calls0) {
		t.Errorf("no-op NodeAlive wrote %q", calls[len(calls0):])
	}
	m.NodeAlive("c2", "n2", false)
	want(t, dp,
		"10.96.0.10:53/udp [10.0.1.2:53]",
		"10.96.0.10:80/tcp [10.0.1.2:8080]",
		"10.96.0.20:80/tcp [] affinity=600",
		"192.168.0.1:30080/tcp [] nodeport affinity=600",
		"192.168.0.2:30080/tcp [] nodeport affinity=600")

	m.NodeAlive("c1", "n1", true)
	want(t, dp, all...)

	// A service added while a node is dead leaves its backends out.
	m.NodeAlive("c1", "n2", false)
	upsert(t, m, strings.Replace(strings.Replace(webYAML, "name: web", "name: web2", 1), "10.96.0.10", "10.96.0.11", 1))
	if got := dp.lines(); !slices.Contains(got, "10.96.0.11:80/tcp [10.0.1.1:8080]") {
		t.Errorf("datapath %q lacks web2 without n2", got)
	}
}

const globalYAML = `
metadata:
  name: web
  annotations: {service.cilium.io/global: "true", service.cilium.io/affinity: AFFINITY}
spec:
  clusterIP: 10.96.0.10
  ports:
  - {name: http, port: 80, targetPort: 8080}
backends:
- {ip: 10.0.1.1, node: n1}
`

func remoteSvc(t *testing.T, ann string) *Service {
	t.Helper()
	return mustParse(t, `
metadata:
  name: web
  annotations: {`+ann+`}
spec:
  clusterIP: 10.100.0.10
  ports:
  - {name: http, port: 8000, targetPort: 9090}
backends:
- {ip: 10.2.1.1, node: m1}
- {ip: 10.2.1.2, node: m2, state: terminating}
`)
}

func TestManagerRemote(t *testing.T) {
	m, dp := newManager(t, "")
	upsert(t, m, strings.Replace(globalYAML, "AFFINITY", "none", 1))
	want(t, dp, "10.96.0.10:80/tcp [10.0.1.1:8080]")

	m.RemoteChanged("c2", remoteSvc(t, `service.cilium.io/global: "true"`), false)
	want(t, dp, "10.96.0.10:80/tcp [10.0.1.1:8080 10.2.1.1:9090]")
	st, _ := m.Get("default", "web")
	if !reflect.DeepEqual(st.Clusters, []string{"c1", "c2"}) {
		t.Errorf("clusters %q, want [c1 c2]", st.Clusters)
	}
	if got := render(st.Frontends[0].Backends); !reflect.DeepEqual(got, []string{
		"c1 10.0.1.1:8080 n1 active *", "c2 10.2.1.1:9090 m1 active *", "c2 10.2.1.2:9090 m2 terminating"}) {
		t.Errorf("status backends %q", got)
	}

	// A remote node dies.
	m.NodeAlive("c2", "m1", false)
	want(t, dp, "10.96.0.10:80/tcp [10.0.1.1:8080]")
	m.NodeAlive("c2", "m1", true)
	want(t, dp, "10.96.0.10:80/tcp [10.0.1.1:8080 10.2.1.1:9090]")

	// A third cluster that does not share; then c2 stops sharing.
	m.RemoteChanged("c3", remoteSvc(t, `service.cilium.io/global: "true", service.cilium.io/shared: "false"`), false)
	want(t, dp, "10.96.0.10:80/tcp [10.0.1.1:8080 10.2.1.1:9090]")
	st, _ = m.Get("default", "web")
	if !reflect.DeepEqual(st.Clusters, []string{"c1", "c2"}) {
		t.Errorf("clusters %q, want [c1 c2]", st.Clusters)
	}
	m.RemoteChanged("c2", remoteSvc(t, `io.cilium/global-service: "true", io.cilium/shared-service: "false"`), false)
	want(t, dp, "10.96.0.10:80/tcp [10.0.1.1:8080]")
	st, _ = m.Get("default", "web")
	if !reflect.DeepEqual(st.Clusters, []string{"c1"}) {
		t.Errorf("clusters %q, want [c1]", st.Clusters)
	}

	// c2 shares again, then is deleted.
	r := remoteSvc(t, `service.cilium.io/global: "true"`)
	m.RemoteChanged("c2", r, false)
	want(t, dp, "10.96.0.10:80/tcp [10.0.1.1:8080 10.2.1.1:9090]")
	m.RemoteChanged("c2", r, true)
	want(t, dp, "10.96.0.10:80/tcp [10.0.1.1:8080]")
	st, _ = m.Get("default", "web")
	if !reflect.DeepEqual(st.Clusters, []string{"c1"}) {
		t.Errorf("clusters after deletion %q, want [c1]", st.Clusters)
	}
	// Deleting what is not there is harmless.
	m.RemoteChanged("c9", r, true)
	want(t, dp, "10.96.0.10:80/tcp [10.0.1.1:8080]")
}

func TestManagerRemoteStatusClusters(t *testing.T) {
	tests := []struct {
		name      string
		localAnn  string
		remotes   map[string]string // cluster -> annotations
		clusters  []string
		backendsN int
	}{
		{"local not global", ``, map[string]string{"c2": `service.cilium.io/global: "true"`}, []string{"c1"}, 1},
		{"remote not global", `service.cilium.io/global: "true"`, map[string]string{"c2": ``}, []string{"c1"}, 1},
		{"remote not shared", `service.cilium.io/global: "true"`, map[string]string{"c2": `service.cilium.io/global: "true", service.cilium.io/shared: "false"`}, []string{"c1"}, 1},
		{"local not shared still uses remotes", `service.cilium.io/global: "true", service.cilium.io/shared: "false"`, map[string]string{"c2": `service.cilium.io/global: "true"`}, []string{"c1", "c2"}, 3},
		{"sorted", `service.cilium.io/global: "true"`, map[string]string{"zz": `service.cilium.io/global: "true"`, "b": `io.cilium/global-service: "true"`}, []string{"c1", "b", "zz"}, 5},
		{"own cluster name ignored", `service.cilium.io/global: "true"`, map[string]string{"c1": `service.cilium.io/global: "true"`}, []string{"c1"}, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, _ := newManager(t, "")
			upsert(t, m, `
metadata: {name: web, annotations: {`+tc.localAnn+`}}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}
backends: [{ip: 10.0.1.1}]`)
			for c, ann := range tc.remotes {
				m.RemoteChanged(c, remoteSvc(t, ann), false)
			}
			st, err := m.Get("default", "web")
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(st.Clusters, tc.clusters) {
				t.Errorf("clusters %q, want %q", st.Clusters, tc.clusters)
			}
			if n := len(st.Frontends[0].Backends); n != tc.backendsN {
				t.Errorf("%d backends listed, want %d: %q", n, tc.backendsN, render(st.Frontends[0].Backends))
			}
		})
	}
}

func TestManagerRemoteBeforeLocal(t *testing.T) {
	m, dp := newManager(t, "")
	m.RemoteChanged("c2", remoteSvc(t, `service.cilium.io/global: "true"`), false)
	want(t, dp)
	if _, err := m.Get("default", "web"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get of a remote-only service: %v, want ErrNotFound", err)
	}
	upsert(t, m, strings.Replace(globalYAML, "AFFINITY", "none", 1))
	want(t, dp, "10.96.0.10:80/tcp [10.0.1.1:8080 10.2.1.1:9090]")
}

func TestManagerAffinity(t *testing.T) {
	tests := []struct {
		affinity     string
		before, dead string // datapath with n1 alive, with n1 dead
	}{
		{"none", "10.96.0.10:80/tcp [10.0.1.1:8080 10.2.1.1:9090]", "10.96.0.10:80/tcp [10.2.1.1:9090]"},
		{"local", "10.96.0.10:80/tcp [10.0.1.1:8080]", "10.96.0.10:80/tcp [10.2.1.1:9090]"},
		{"Remote", "10.96.0.10:80/tcp [10.2.1.1:9090]", "10.96.0.10:80/tcp [10.2.1.1:9090]"},
	}
	for _, tc := range tests {
		t.Run(tc.affinity, func(t *testing.T) {
			m, dp := newManager(t, "")
			upsert(t, m, strings.Replace(globalYAML, "AFFINITY", tc.affinity, 1))
			m.RemoteChanged("c2", remoteSvc(t, `service.cilium.io/global: "true"`), false)
			want(t, dp, tc.before)
			m.NodeAlive("c1", "n1", false)
			want(t, dp, tc.dead)
			m.NodeAlive("c1", "n1", true)
			want(t, dp, tc.before)
		})
	}
}

func TestManagerMaglev(t *testing.T) {
	const svc = `
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 80}]
  ALG
backends:
- {ip: 10.0.1.3, state: S}
- {ip: 10.0.1.1, state: S}
- {ip: 10.0.1.2, state: S}
- {ip: 10.0.1.4, state: terminating}
`
	tests := []struct {
		name   string
		config string
		spec   string
		maglev bool
	}{
		{"config maglev", "maglev", "", true},
		{"spec maglev", "random", "loadBalancerAlgorithm: maglev", true},
		{"spec maglev, default config", "", "loadBalancerAlgorithm: maglev", true},
		{"spec random over config maglev", "maglev", "loadBalancerAlgorithm: random", false},
		{"random", "random", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, dp := newManager(t, tc.config)
			yaml := strings.Replace(svc, "ALG", tc.spec, 1)
			upsert(t, m, strings.ReplaceAll(yaml, "state: S", "state: active"))
			svcs, _ := dp.snapshot()
			if len(svcs) != 1 {
				t.Fatalf("%d frontends", len(svcs))
			}
			var lbs datapath.LBService
			for _, s := range svcs {
				lbs = s
			}
			if len(lbs.Backends) != 3 {
				t.Fatalf("backends %+v, want the 3 active", lbs.Backends)
			}
			st, _ := m.Get("default", "web")
			if !tc.maglev {
				if lbs.Algorithm != datapath.AlgRandom || lbs.Maglev != nil || st.Algorithm != "random" {
					t.Errorf("algorithm %d, table of %d, status %q: want random, none", lbs.Algorithm, len(lbs.Maglev), st.Algorithm)
				}
				return
			}
			if lbs.Algorithm != datapath.AlgMaglev || st.Algorithm != "maglev" {
				t.Fatalf("algorithm %d, status %q, want maglev", lbs.Algorithm, st.Algorithm)
			}
			if len(lbs.Maglev) != fakeMaglevSize {
				t.Fatalf("maglev table of %d slots, want %d", len(lbs.Maglev), fakeMaglevSize)
			}
			count := make([]int, len(lbs.Backends))
			for i, e := range lbs.Maglev {
				if e < 0 || int(e) >= len(lbs.Backends) {
					t.Fatalf("slot %d = %d, not an index into %d backends", i, e, len(lbs.Backends))
				}
				count[e]++
			}
			for i, c := range count {
				// 251/3: 83 or 84 slots each.
				if c < fakeMaglevSize/3 || c > fakeMaglevSize/3+1 {
					t.Errorf("backend %d has %d slots", i, c)
				}
			}
			// The table is the one for these backends whatever their order.
			var aps []netip.AddrPort
			for _, b := range lbs.Backends {
				aps = append(aps, netip.AddrPortFrom(b.IP, b.Port))
			}
			ref, err := MaglevTable(aps, fakeMaglevSize)
			if err != nil || !reflect.DeepEqual(ref, lbs.Maglev) {
				t.Errorf("table differs from MaglevTable of %v (%v)", aps, err)
			}

			// Every backend terminating: no table, no backends.
			upsert(t, m, strings.ReplaceAll(yaml, "state: S", "state: terminating"))
			svcs, _ = dp.snapshot()
			for fe, s := range svcs {
				if len(s.Backends) != 0 || len(s.Maglev) != 0 {
					t.Errorf("%s with no usable backend: %d backends, table of %d", fe, len(s.Backends), len(s.Maglev))
				}
			}
			if m.Errors() != 0 {
				t.Errorf("Errors() = %d", m.Errors())
			}
		})
	}
}

func TestManagerList(t *testing.T) {
	m, _ := newManager(t, "")
	if l := m.List(); l == nil || len(l) != 0 {
		t.Errorf("List of nothing = %#v, want empty", l)
	}
	for i, key := range []string{"zeta/b", "alpha/z", "default/a", "alpha/a", "zeta/a"} {
		ns, name, _ := strings.Cut(key, "/")
		upsert(t, m, fmt.Sprintf(`
metadata: {name: %s, namespace: %s}
spec: {clusterIP: 10.96.0.%d, ports: [{port: 80}]}`, name, ns, i+1))
	}
	var got []string
	for _, st := range m.List() {
		got = append(got, st.Namespace+"/"+st.Name)
	}
	if want := []string{"alpha/a", "alpha/z", "default/a", "zeta/a", "zeta/b"}; !reflect.DeepEqual(got, want) {
		t.Errorf("List = %q, want %q", got, want)
	}
	if _, err := m.Get("default", "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get of unknown: %v, want ErrNotFound", err)
	}
	if _, err := m.Get("alpha", "a"); err != nil {
		t.Errorf("Get: %v", err)
	}
}

func TestManagerDatapathErrors(t *testing.T) {
	m, dp := newManager(t, "")
	dp.fail = errors.New("map full")
	upsert(t, m, npYAML)
	if got := m.Errors(); got != 3 {
		t.Errorf("Errors() = %d, want 3 (one per frontend)", got)
	}
}

// DeleteFrom removes a stored service only if it has the given source
// and, when a revision is given, is still at it: a Kubernetes Service's
// removal leaves a service of the same name stored with the CLI, and a
// removal decided on an older read leaves a service stored again since.
// Stored lists each with its source and revision. Against etcd.
func TestManagerDeleteFrom(t *testing.T) {
	ctx := context.Background()
	m, kv := etcdManager(t)
	k8s := func(name, ip string) *Service { return k8sService(t, name, ip) }
	for _, s := range []*Service{k8s("web", "10.96.0.10"), k8s("db", "10.96.0.11"),
		mustParse(t, "metadata: {name: cli}\nspec: {clusterIP: 10.96.0.12, ports: [{port: 80}]}\n")} {
		if err := m.Upsert(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	stored, err := m.Stored(ctx)
	if err != nil || len(stored) != 3 {
		t.Fatalf("Stored: %+v %v", stored, err)
	}
	rev := map[string]int64{}
	for _, s := range stored {
		rev[s.Name] = s.Revision
		if want := map[string]string{"web": SourceKubernetes, "db": SourceKubernetes, "cli": ""}[s.Name]; s.Source != want || s.Namespace != "default" || s.Revision == 0 {
			t.Fatalf("Stored: %+v", s)
		}
	}
	if done, err := m.DeleteFrom(ctx, "default", "cli", SourceKubernetes, 0, ""); done || err != nil {
		t.Fatalf("DeleteFrom of the CLI's service: %v %v", done, err)
	}
	// db is stored again after the read that decided its removal (made
	// again: a new UID; a store of the same value writes nothing).
	db := k8s("db", "10.96.0.11")
	db.Metadata.Annotations[UIDAnnotation] = "made-again"
	if err := m.Upsert(ctx, db); err != nil {
		t.Fatal(err)
	}
	if done, err := m.DeleteFrom(ctx, "default", "db", SourceKubernetes, rev["db"], ""); done || err != nil {
		t.Fatalf("DeleteFrom at an old revision: %v %v", done, err)
	}
	if done, err := m.DeleteFrom(ctx, "default", "web", SourceKubernetes, rev["web"], ""); !done || err != nil {
		t.Fatalf("DeleteFrom at its revision: %v %v", done, err)
	}
	if done, err := m.DeleteFrom(ctx, "default", "web", SourceKubernetes, 0, ""); done || err != nil {
		t.Fatalf("DeleteFrom of a removed service: %v %v", done, err)
	}
	kvs, _, err := kv.List(ctx, Prefix+"c1/")
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, e := range kvs {
		keys = append(keys, strings.TrimPrefix(e.Key, Prefix+"c1/"))
	}
	if want := []string{"default/cli", "default/db"}; !slices.Equal(keys, want) {
		t.Fatalf("stored: %v, want %v", keys, want)
	}
}

// A Service deleted and another made at once with its ClusterIP (the API
// server may hand a freed address out again): the second is stored
// although this manager's watch has not yet seen the deletion. Before,
// the frontend still belonged to the deleted service in the manager's
// view, and the second was refused as a conflict until its next event
// (the informers' resync: 10 minutes); the CLI's delete likewise. And a
// frontend just taken is taken for the next write.
func TestManagerFrontendFreeRightAfterDeleteFrom(t *testing.T) {
	ctx := context.Background()
	m, _ := etcdManager(t)
	k8s := func(name, ip string) *Service { return k8sService(t, name, ip) }
	for r := range 60 {
		i, cli := r%30, r >= 30
		old, next := fmt.Sprintf("old-%d-%v", i, cli), fmt.Sprintf("new-%d-%v", i, cli)
		if err := m.Upsert(ctx, k8s(old, "10.96.0.10")); err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool { _, err := m.Get("default", old); return err == nil })
		if cli { // the CLI's delete, 30 rounds
			if err := m.Delete(ctx, "default", old); err != nil {
				t.Fatalf("Delete %s: %v", old, err)
			}
		} else if done, err := m.DeleteFrom(ctx, "default", old, SourceKubernetes, 0, ""); !done || err != nil {
			t.Fatalf("DeleteFrom %s: %v %v", old, done, err)
		}
		if err := m.Upsert(ctx, k8s(next, "10.96.0.10")); err != nil {
			t.Fatalf("round %d: the ClusterIP of a service just deleted is refused: %v", i, err)
		}
		// And the frontend just taken is taken: a third service with it
		// is refused at once (before, it could be stored beside it).
		if err := m.Upsert(ctx, k8s("third", "10.96.0.10")); !errors.Is(err, ErrConflict) {
			t.Fatalf("round %d: a third service with a frontend just taken: %v, want ErrConflict", i, err)
		}
		if done, err := m.DeleteFrom(ctx, "default", next, SourceKubernetes, 0, ""); !done || err != nil {
			t.Fatalf("DeleteFrom %s: %v %v", next, done, err)
		}
		waitFor(t, func() bool { _, err := m.Get("default", next); return err != nil })
	}
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// succeeded counts the nil errors of concurrent Upserts; any other than
// nil or ErrConflict fails t.
func succeeded(t *testing.T, errs []error) int {
	t.Helper()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, ErrConflict):
			t.Fatalf("Upsert: %v", err)
		}
	}
	return ok
}

// twoManagers are two agents' managers of cluster c1 on one test etcd.
func twoManagers(t *testing.T) (*Manager, *Manager, *kvstore.Client) {
	t.Helper()
	m1, kv := etcdManager(t)
	m2, err := New(context.Background(), Config{Cluster: "c1", NodeIPs: []netip.Addr{node1, node2}, KV: kv, Datapath: newFakeDP()})
	if err != nil {
		t.Fatal(err)
	}
	return m1, m2, kv
}

// A removal for a Kubernetes object removes only the service stored from
// that object (its UID) or from one whose UID was not stored (an older
// agent's store).
func TestManagerDeleteFromNamesItsObject(t *testing.T) {
	ctx := context.Background()
	m, _ := etcdManager(t)
	web := k8sService(t, "web", "10.96.0.10")
	web.Metadata.Annotations[UIDAnnotation] = "second"
	old := k8sService(t, "old", "10.96.0.11") // no UID: an older agent's
	for _, s := range []*Service{web, old} {
		if err := m.Upsert(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		name, uid string
		done      bool
	}{{"web", "first", false}, {"web", "second", true}, {"old", "any", true}} {
		if done, err := m.DeleteFrom(ctx, "default", c.name, SourceKubernetes, 0, c.uid); done != c.done || err != nil {
			t.Fatalf("DeleteFrom %s for the object %s: %v %v, want %v", c.name, c.uid, done, err, c.done)
		}
	}
}

// Two services stored on one ClusterIP (by agents from before the store's
// guard, racing): deleting one leaves the address held by the other, so a
// third service is refused it. Before, the delete freed the address in
// the agent's view and the third was stored beside the remaining one.
func TestManagerAddressStaysHeldByTheOtherOfTwo(t *testing.T) {
	ctx := context.Background()
	m, kv := etcdManager(t)
	for _, name := range []string{"a", "b"} {
		data := fmt.Sprintf(`{"metadata":{"name":%q,"namespace":"default"},"spec":{"clusterIP":"10.96.0.10","ports":[{"port":80}]}}`, name)
		if _, err := kv.Raw().Put(ctx, Prefix+"c1/default/"+name, data); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, func() bool { return len(m.List()) == 2 })
	// Each keeps what it holds: a backend change of either is stored.
	for _, name := range []string{"a", "b"} {
		if err := m.Upsert(ctx, mustParse(t, "metadata: {name: "+name+"}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\nbackends: [{ip: 10.0.0.1}]\n")); err != nil {
			t.Fatalf("a backend change of %s: %v", name, err)
		}
	}
	// The view applied b last; deleting it is what freed the address.
	if err := m.Delete(ctx, "default", "b"); err != nil {
		t.Fatal(err)
	}
	third := mustParse(t, "metadata: {name: c}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n")
	if err := m.Upsert(ctx, third); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "default/a") {
		t.Fatalf("a third service on the address a still holds: %v, want ErrConflict naming default/a", err)
	}
}

// etcdManager is a manager of cluster c1 on a test etcd.
func etcdManager(t *testing.T) (*Manager, *kvstore.Client) {
	t.Helper()
	kv := testutil.EtcdClient(t)
	m, err := New(context.Background(), Config{Cluster: "c1", NodeIPs: []netip.Addr{node1, node2}, KV: kv, Datapath: newFakeDP()})
	if err != nil {
		t.Fatal(err)
	}
	return m, kv
}

// k8sService is service default/name on ip:80, stored from a Service object.
func k8sService(t *testing.T, name, ip string) *Service {
	return mustParse(t, fmt.Sprintf("metadata: {name: %s, annotations: {%s: %s}}\nspec: {clusterIP: %s, ports: [{port: 80}]}\n",
		name, SourceAnnotation, SourceKubernetes, ip))
}

// Two agents storing services with one ClusterIP at once: exactly one is
// stored, whichever agent each Upsert runs on. Before, each agent checked
// against its own view only, and both agents' services could be stored on
// the same frontend.
func TestManagersOnTwoAgentsConflict(t *testing.T) {
	m1, m2, kv := twoManagers(t)
	ms := []*Manager{m1, m2}
	for round := range 40 {
		const n = 6
		errs := make([]error, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			s := mustParse(t, fmt.Sprintf("metadata: {name: r%d-s%d}\nspec: {clusterIP: 10.96.%d.10, ports: [{port: 80}]}\n", round, i, round))
			wg.Go(func() {
				<-start
				errs[i] = ms[i%2].Upsert(context.Background(), s)
			})
		}
		close(start)
		wg.Wait()
		ok := succeeded(t, errs)
		kvs, _, err := kv.List(context.Background(), Prefix+"c1/default/r"+fmt.Sprint(round)+"-")
		if err != nil {
			t.Fatal(err)
		}
		if ok != 1 || len(kvs) != 1 {
			t.Fatalf("round %d: %d Upserts succeeded and the kvstore holds %d services on 10.96.%d.10, want 1 and 1", round, ok, len(kvs), round)
		}
	}
}

// A service's store that keeps its frontends (a backend change) is not
// written over a newer state: deleted on another agent after this agent's
// check, and its ClusterIP taken by another service, it is refused, and
// not stored again beside that one (before, the backend change stored it
// unguarded, and two services held one ClusterIP).
func TestManagerStoreKeepingFrontendsSeesNewerState(t *testing.T) {
	ctx := context.Background()
	m1, m2, kv := twoManagers(t)
	x := mustParse(t, "metadata: {name: old}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\nbackends: [{ip: 10.0.0.1}]\n")
	if err := m1.Upsert(ctx, x); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, err := m2.Get("default", "old"); return err == nil })
	m1.beforePut = func() {
		m1.beforePut = nil
		if err := m2.Delete(ctx, "default", "old"); err != nil {
			t.Error(err)
		}
		if err := m2.Upsert(ctx, mustParse(t, "metadata: {name: new}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n")); err != nil {
			t.Error(err)
		}
	}
	x2 := mustParse(t, "metadata: {name: old}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\nbackends: [{ip: 10.0.0.2}]\n")
	if err := m1.Upsert(ctx, x2); !errors.Is(err, ErrConflict) {
		t.Fatalf("old's backend change after old was deleted and its ClusterIP taken: %v, want ErrConflict", err)
	}
	kvs, _, err := kv.List(ctx, Prefix+"c1/")
	if err != nil {
		t.Fatal(err)
	}
	if len(kvs) != 1 || !strings.HasSuffix(kvs[0].Key, "/default/new") {
		t.Fatalf("stored: %d services, want new alone", len(kvs))
	}
}

// A store of the value already stored writes nothing (every agent stores
// each Kubernetes Service's every change); a changed value is written.
func TestManagerStoreOfSameValueWritesNothing(t *testing.T) {
	ctx := context.Background()
	m, kv := etcdManager(t)
	rev := func() int64 {
		t.Helper()
		e, err := kv.Get(ctx, Prefix+"c1/default/web")
		if err != nil {
			t.Fatal(err)
		}
		return e.ModRevision
	}
	web := k8sService(t, "web", "10.96.0.10")
	if err := m.Upsert(ctx, web); err != nil {
		t.Fatal(err)
	}
	first := rev()
	if err := m.Upsert(ctx, k8sService(t, "web", "10.96.0.10")); err != nil || rev() != first {
		t.Fatalf("the same value again: %v, revision %d, want %d (not written)", err, rev(), first)
	}
	web.Backends = []Backend{{IP: "10.0.0.9"}}
	if err := m.Upsert(ctx, web); err != nil || rev() == first {
		t.Fatalf("a changed value: %v, revision %d, want a new one", err, rev())
	}
}

// A store of a service's change that lost its guard to the service's own
// delete on another agent (no newer key to wait for: a read does not show
// deletes) stores it anew, its frontend being free. (It waits until this
// agent's view has dropped the service; without that wait it retried at
// once and, with a view slower than ten round trips, ended in ErrBusy.
// This test does not slow the view, so it passes either way: it checks
// the outcome, not the wait.)
func TestManagerStoreAfterItsDeleteElsewhere(t *testing.T) {
	ctx := context.Background()
	m1, m2, kv := twoManagers(t)
	if err := m1.Upsert(ctx, mustParse(t, "metadata: {name: web}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\nbackends: [{ip: 10.0.0.1}]\n")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, err := m2.Get("default", "web"); return err == nil })
	m1.beforePut = func() {
		m1.beforePut = nil
		if err := m2.Delete(ctx, "default", "web"); err != nil {
			t.Error(err)
		}
	}
	if err := m1.Upsert(ctx, mustParse(t, "metadata: {name: web}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\nbackends: [{ip: 10.0.0.2}]\n")); err != nil {
		t.Fatalf("a change of a service deleted elsewhere meanwhile: %v, want it stored anew", err)
	}
	e, err := kv.Get(ctx, Prefix+"c1/default/web")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := Parse(e.Value); err != nil || len(got.Backends) != 1 || got.Backends[0].IP != "10.0.0.2" {
		t.Fatalf("stored web: %v %s", err, e.Value)
	}
}

// Two services on one frontend (stored at once by older agents): deleting
// either leaves the frontend in the datapath, serving the other. Before,
// the delete removed the frontend from the datapath whichever service it
// served, and the address went dark until the other's next change.
func TestManagerSharedFrontendOutlivesEitherDelete(t *testing.T) {
	fe := datapath.Frontend{IP: netip.MustParseAddr("10.96.0.10"), Port: 80, Proto: unix.IPPROTO_TCP}
	backend := map[string]string{"a": "10.0.0.1", "b": "10.0.0.2"}
	for _, gone := range []string{"a", "b"} {
		t.Run("delete "+gone, func(t *testing.T) {
			ctx := context.Background()
			m, kv := etcdManager(t)
			dp := m.cfg.Datapath.(*fakeDP)
			for _, name := range []string{"a", "b"} {
				data := fmt.Sprintf(`{"metadata":{"name":%q,"namespace":"default"},"spec":{"clusterIP":"10.96.0.10","ports":[{"port":80}]},"backends":[{"ip":%q}]}`, name, backend[name])
				if _, err := kv.Raw().Put(ctx, Prefix+"c1/default/"+name, data); err != nil {
					t.Fatal(err)
				}
			}
			waitFor(t, func() bool { return len(m.List()) == 2 })
			if err := m.Delete(ctx, "default", gone); err != nil {
				t.Fatal(err)
			}
			waitFor(t, func() bool { return len(m.List()) == 1 })
			kept := map[string]string{"a": "b", "b": "a"}[gone]
			svcs, _ := dp.snapshot()
			s, ok := svcs[fe]
			if !ok {
				t.Fatalf("after deleting %s the datapath has no 10.96.0.10:80; %s still holds it", gone, kept)
			}
			if len(s.Backends) != 1 || s.Backends[0].IP.String() != backend[kept] {
				t.Fatalf("after deleting %s the datapath serves %v, want %s's backend %s", gone, s.Backends, kept, backend[kept])
			}
			if _, name, ok := m.At(netip.MustParseAddrPort("10.96.0.10:80"), "TCP"); !ok || name != kept {
				t.Fatalf("At(10.96.0.10:80) = %q, %v; want %s", name, ok, kept)
			}
			if err := m.Delete(ctx, "default", kept); err != nil {
				t.Fatal(err)
			}
			waitFor(t, func() bool { return len(m.List()) == 0 })
			if svcs, _ := dp.snapshot(); len(svcs) != 0 {
				t.Fatalf("after deleting both the datapath still has %v", svcs)
			}
		})
	}
}

// The hand-over of a shared frontend writes only that frontend: the other
// service's other frontends stay as the datapath had them. And a hand-over
// the datapath refuses removes the frontend rather than leaving it serving
// the backends of the service that let it go.
func TestManagerSharedFrontendHandOver(t *testing.T) {
	ctx := context.Background()
	m, kv := etcdManager(t)
	dp := m.cfg.Datapath.(*fakeDP)
	put := func(name, ports, backend string) {
		t.Helper()
		data := fmt.Sprintf(`{"metadata":{"name":%q,"namespace":"default"},"spec":{"clusterIP":"10.96.0.10","ports":[%s]},"backends":[{"ip":%q}]}`, name, ports, backend)
		if _, err := kv.Raw().Put(ctx, Prefix+"c1/default/"+name, data); err != nil {
			t.Fatal(err)
		}
	}
	served := func(port uint16) string {
		svcs, _ := dp.snapshot()
		s, ok := svcs[datapath.Frontend{IP: netip.MustParseAddr("10.96.0.10"), Port: port, Proto: unix.IPPROTO_TCP}]
		if !ok || len(s.Backends) != 1 {
			return fmt.Sprint(s.Backends)
		}
		return s.Backends[0].IP.String()
	}
	both := `{"name":"http","port":80},{"name":"https","port":443}`
	put("a", both, "10.0.0.1")
	put("b", both, "10.0.0.2")
	waitFor(t, func() bool { return served(80) == "10.0.0.2" && served(443) == "10.0.0.2" })
	put("a", both, "10.0.0.3") // a is served on both now
	waitFor(t, func() bool { return served(80) == "10.0.0.3" && served(443) == "10.0.0.3" })
	put("a", `{"port":80}`, "10.0.0.4") // a lets 443 go: b serves it; 80 stays a's
	waitFor(t, func() bool { return served(80) == "10.0.0.4" && served(443) == "10.0.0.2" })
	if got := served(80); got != "10.0.0.4" {
		t.Fatalf("10.96.0.10:80 serves %s after the hand-over of 443, want a's 10.0.0.4", got)
	}

	// b is served on 443, and the datapath refuses the hand-over of
	// b's delete to a: the frontend goes, not left with b's backends.
	put("a", both, "10.0.0.6")
	put("b", `{"name":"https","port":443}`, "10.0.0.7")
	waitFor(t, func() bool { return served(80) == "10.0.0.6" && served(443) == "10.0.0.7" })
	dp.mu.Lock()
	dp.fail = errors.New("map full")
	dp.mu.Unlock()
	if _, err := kv.Raw().Delete(ctx, Prefix+"c1/default/b"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(m.List()) == 1 })
	if got := served(443); got != "[]" {
		t.Fatalf("10.96.0.10:443 serves %s after b's delete and a refused hand-over, want no entry", got)
	}
}

// A remote cluster's backend must be its own, an address in one of its
// nodes' pod CIDRs or one of its nodes' addresses (the router's view):
// another is left out of the datapath and the status until the cluster
// owns it. Before, a remote's shared global service could send this
// cluster's clients to any address: this cluster's pods, the node's
// metadata service, an outside host.
func TestManagerRemoteBackendsMustBeTheirClusters(t *testing.T) {
	m, dp := newManager(t, "")
	owned := map[string][]netip.Prefix{"c2": {netip.MustParsePrefix("10.2.1.0/24")}}
	m.SetRemoteOwner(func(cluster string, ip netip.Addr) bool {
		return slices.ContainsFunc(owned[cluster], func(p netip.Prefix) bool { return p.Contains(ip) })
	})
	upsert(t, m, strings.Replace(globalYAML, "AFFINITY", "none", 1))
	r := remoteSvc(t, `service.cilium.io/global: "true"`)
	r.Backends = append(r.Backends, Backend{IP: "10.0.1.7", Node: "m1"}, Backend{IP: "169.254.169.254", Node: "m1"}, Backend{IP: "192.0.2.50", Node: "m3"})
	m.RemoteChanged("c2", r, false)
	want(t, dp, "10.96.0.10:80/tcp [10.0.1.1:8080 10.2.1.1:9090]")
	st, _ := m.Get("default", "web")
	if got := render(st.Frontends[0].Backends); !reflect.DeepEqual(got, []string{
		"c1 10.0.1.1:8080 n1 active *", "c2 10.2.1.1:9090 m1 active *", "c2 10.2.1.2:9090 m2 terminating"}) {
		t.Errorf("status backends %q", got)
	}
	// c2's node m3 (192.0.2.0/24) is learned: its backend comes in (a
	// change of another cluster's nodes changes nothing).
	owned["c2"] = append(owned["c2"], netip.MustParsePrefix("192.0.2.0/24"))
	m.NodesChanged([]string{"c3"})
	want(t, dp, "10.96.0.10:80/tcp [10.0.1.1:8080 10.2.1.1:9090]")
	m.NodesChanged([]string{"c2"})
	want(t, dp, "10.96.0.10:80/tcp [10.0.1.1:8080 10.2.1.1:9090 192.0.2.50:9090]")
	// c2's service now has only backends of its own; then c2 loses the
	// node holding 10.2.1.0/24: its backend there goes.
	r = remoteSvc(t, `service.cilium.io/global: "true"`)
	r.Backends = append(r.Backends, Backend{IP: "192.0.2.50", Node: "m3"})
	m.RemoteChanged("c2", r, false)
	want(t, dp, "10.96.0.10:80/tcp [10.0.1.1:8080 10.2.1.1:9090 192.0.2.50:9090]")
	owned["c2"] = owned["c2"][1:]
	m.NodesChanged([]string{"c2"})
	want(t, dp, "10.96.0.10:80/tcp [10.0.1.1:8080 192.0.2.50:9090]")
}

// A remote cluster's backend on a control-plane address (the kvstore's)
// is left out like one that is not the cluster's, even when the router
// takes the address as that cluster's (a remote node record naming it).
// Found 2026-12-05 by reading the service manager: only local services'
// backends were checked, so a remote could send this cluster's NodePort
// clients to its kvstore from a node's address.
func TestManagerRemoteBackendOnControlPlaneLeftOut(t *testing.T) {
	dp := newFakeDP()
	kv := netip.MustParseAddr("192.0.2.99")
	m, err := New(context.Background(), Config{Cluster: "c1", NodeIPs: []netip.Addr{node1}, Datapath: dp,
		ControlPlane: func(a netip.Addr) string {
			if a == kv {
				return "the cluster's kvstore"
			}
			return ""
		}})
	if err != nil {
		t.Fatal(err)
	}
	m.SetRemoteOwner(func(cluster string, ip netip.Addr) bool {
		return cluster == "c2" && (netip.MustParsePrefix("10.2.1.0/24").Contains(ip) || ip == kv)
	})
	upsert(t, m, strings.Replace(globalYAML, "AFFINITY", "none", 1))
	r := remoteSvc(t, `service.cilium.io/global: "true"`)
	r.Backends = append(r.Backends, Backend{IP: kv.String(), Node: "m9"})
	m.RemoteChanged("c2", r, false)
	want(t, dp, "10.96.0.10:80/tcp [10.0.1.1:8080 10.2.1.1:9090]")
}

// An agent of an earlier version stored a multi-port service with every
// backend naming every port, and every annotation; an agent of this
// version storing the same service (its ports folded, only the annotations
// read: Service.KubernetesForm) finds it stored and writes nothing. Until 2026-12-07 (the review of the folded ports) the two
// versions wrote every change of such a Service in turn during an upgrade,
// each agent once, the whole value each time.
func TestManagerOlderShapeStoredNotRewritten(t *testing.T) {
	ctx := context.Background()
	m, kv := etcdManager(t)
	const spec = "metadata: {name: web, annotations: {%s: %s}}\nspec: {clusterIP: 10.96.0.10, ports: [{name: a, port: 80}, {name: b, port: 81}]}\nbackends: [%s]\n"
	older := mustParse(t, fmt.Sprintf(spec, SourceAnnotation, SourceKubernetes,
		"{ip: 10.0.0.1, ports: {a: 8080, b: 9090}}, {ip: 10.0.0.2, ports: {a: 8080, b: 9090}}"))
	older.Metadata.Annotations["team"] = "a" // no agent reads it: this version does not store it
	data, err := json.Marshal(older)
	if err != nil {
		t.Fatal(err)
	}
	key := Prefix + "c1/default/web"
	if err := kv.Put(ctx, key, data, 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, err := m.Get("default", "web"); return err == nil })
	first, err := kv.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	folded := mustParse(t, fmt.Sprintf(spec, SourceAnnotation, SourceKubernetes, "{ip: 10.0.0.1}, {ip: 10.0.0.2}"))
	folded.Spec.Ports[0].TargetPort, folded.Spec.Ports[1].TargetPort = 8080, 9090
	if err := m.Upsert(ctx, folded); err != nil {
		t.Fatal(err)
	}
	if now, err := kv.Get(ctx, key); err != nil || now.ModRevision != first.ModRevision {
		t.Fatalf("the same service in the folded form was written again over the older shape (revision %d, was %d; %v)", now.ModRevision, first.ModRevision, err)
	}
	// A real change is written.
	folded.Spec.Ports[1].TargetPort = 9091
	if err := m.Upsert(ctx, folded); err != nil {
		t.Fatal(err)
	}
	if now, _ := kv.Get(ctx, key); now.ModRevision == first.ModRevision {
		t.Fatal("a changed service was not written")
	}
}
