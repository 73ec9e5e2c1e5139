package service

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// Annotation sets.
var (
	annGlobal       = map[string]string{AnnotationGlobal: "true"}
	annGlobalLocal  = map[string]string{AnnotationGlobal: "true", AnnotationAffinity: "local"}
	annGlobalRemote = map[string]string{AnnotationGlobal: "true", AnnotationAffinity: "remote"}
	annNotShared    = map[string]string{AnnotationGlobal: "true", AnnotationShared: "false"}
	annLegacyShared = map[string]string{AnnotationGlobalLegacy: "true", AnnotationSharedLegacy: "true"}
)

var httpPort = []Port{{Name: "http", Port: 80, TargetPort: 8080}}

// mkSvc builds and validates a service "default/web".
func mkSvc(t *testing.T, ann map[string]string, ports []Port, backends ...Backend) *Service {
	t.Helper()
	s := &Service{Metadata: Metadata{Name: "web", Annotations: ann},
		Spec:     Spec{ClusterIP: "10.96.0.10", Ports: slices.Clone(ports)},
		Backends: slices.Clone(backends)}
	if err := s.Validate(); err != nil {
		t.Fatalf("mkSvc: %v", err)
	}
	return s
}

func be(ip, node, state string) Backend { return Backend{IP: ip, Node: node, State: state} }

// deadNodes is an Alive with the given cluster/node pairs down.
func deadNodes(dead ...string) Alive {
	return func(cluster, node string) bool { return !slices.Contains(dead, cluster+"/"+node) }
}

// render shows a selection as "cluster addr node state[ dead][ *]" (*: preferred).
func render(v []BackendView) []string {
	out := []string{}
	for _, b := range v {
		s := fmt.Sprintf("%s %s %s %s", b.Cluster, b.Addr, b.Node, b.State)
		if !b.Healthy {
			s += " dead"
		}
		if b.Preferred {
			s += " *"
		}
		out = append(out, s)
	}
	return out
}

func TestSelect(t *testing.T) {
	localBE := []Backend{be("10.0.1.1", "n1", ""), be("10.0.1.2", "n2", "")}
	remoteBE := []Backend{be("10.1.1.1", "m1", ""), be("10.1.1.2", "m2", "")}
	tests := []struct {
		name     string
		localAnn map[string]string
		local    []Backend
		remotes  map[string]map[string]string // cluster -> annotations, backends remoteBE
		dead     []string
		want     []string
	}{
		{
			name:    "not global ignores remotes",
			local:   localBE,
			remotes: map[string]map[string]string{"c2": annGlobal},
			want:    []string{"c1 10.0.1.1:8080 n1 active *", "c1 10.0.1.2:8080 n2 active *"},
		},
		{
			name:     "global no remotes",
			localAnn: annGlobal,
			local:    localBE,
			want:     []string{"c1 10.0.1.1:8080 n1 active *", "c1 10.0.1.2:8080 n2 active *"},
		},
		{
			name:     "global affinity none prefers both clusters",
			localAnn: annGlobal,
			local:    localBE,
			remotes:  map[string]map[string]string{"c2": annGlobal},
			want: []string{"c1 10.0.1.1:8080 n1 active *", "c1 10.0.1.2:8080 n2 active *",
				"c2 10.1.1.1:8080 m1 active *", "c2 10.1.1.2:8080 m2 active *"},
		},
		{
			name:     "legacy annotations",
			localAnn: map[string]string{AnnotationGlobalLegacy: "true", AnnotationAffinityLegacy: "Local"},
			local:    localBE,
			remotes:  map[string]map[string]string{"c2": annLegacyShared},
			want: []string{"c1 10.0.1.1:8080 n1 active *", "c1 10.0.1.2:8080 n2 active *",
				"c2 10.1.1.1:8080 m1 active", "c2 10.1.1.2:8080 m2 active"},
		},
		{
			name:     "affinity local prefers local",
			localAnn: annGlobalLocal,
			local:    localBE,
			remotes:  map[string]map[string]string{"c2": annGlobal},
			want: []string{"c1 10.0.1.1:8080 n1 active *", "c1 10.0.1.2:8080 n2 active *",
				"c2 10.1.1.1:8080 m1 active", "c2 10.1.1.2:8080 m2 active"},
		},
		{
			name:     "affinity local with one local usable",
			localAnn: annGlobalLocal,
			local:    []Backend{be("10.0.1.1", "n1", StateTerminating), be("10.0.1.2", "n2", "")},
			remotes:  map[string]map[string]string{"c2": annGlobal},
			want: []string{"c1 10.0.1.1:8080 n1 terminating", "c1 10.0.1.2:8080 n2 active *",
				"c2 10.1.1.1:8080 m1 active", "c2 10.1.1.2:8080 m2 active"},
		},
		{
			name:     "affinity local fails over when local terminating or in maintenance",
			localAnn: annGlobalLocal,
			local:    []Backend{be("10.0.1.1", "n1", StateTerminating), be("10.0.1.2", "n2", StateMaintenance)},
			remotes:  map[string]map[string]string{"c2": annGlobal},
			want: []string{"c1 10.0.1.1:8080 n1 terminating", "c1 10.0.1.2:8080 n2 maintenance",
				"c2 10.1.1.1:8080 m1 active *", "c2 10.1.1.2:8080 m2 active *"},
		},
		{
			name:     "affinity local fails over when local nodes are dead",
			localAnn: annGlobalLocal,
			local:    localBE,
			remotes:  map[string]map[string]string{"c2": annGlobal},
			dead:     []string{"c1/n1", "c1/n2"},
			want: []string{"c1 10.0.1.1:8080 n1 active dead", "c1 10.0.1.2:8080 n2 active dead",
				"c2 10.1.1.1:8080 m1 active *", "c2 10.1.1.2:8080 m2 active *"},
		},
		{
			name:     "affinity local fails over with no local backends",
			localAnn: annGlobalLocal,
			remotes:  map[string]map[string]string{"c2": annGlobal},
			want:     []string{"c2 10.1.1.1:8080 m1 active *", "c2 10.1.1.2:8080 m2 active *"},
		},
		{
			name:     "affinity local: one dead, one terminating",
			localAnn: annGlobalLocal,
			local:    []Backend{be("10.0.1.1", "n1", StateTerminating), be("10.0.1.2", "n2", "")},
			remotes:  map[string]map[string]string{"c2": annGlobal},
			dead:     []string{"c1/n2"},
			want: []string{"c1 10.0.1.1:8080 n1 terminating", "c1 10.0.1.2:8080 n2 active dead",
				"c2 10.1.1.1:8080 m1 active *", "c2 10.1.1.2:8080 m2 active *"},
		},
		{
			name:     "a dead node is per cluster",
			localAnn: annGlobalLocal,
			local:    localBE,
			remotes:  map[string]map[string]string{"c2": annGlobal},
			dead:     []string{"c2/n1", "c2/n2", "c1/m1"},
			want: []string{"c1 10.0.1.1:8080 n1 active *", "c1 10.0.1.2:8080 n2 active *",
				"c2 10.1.1.1:8080 m1 active", "c2 10.1.1.2:8080 m2 active"},
		},
		{
			name:     "affinity remote prefers remote",
			localAnn: annGlobalRemote,
			local:    localBE,
			remotes:  map[string]map[string]string{"c2": annGlobal},
			want: []string{"c1 10.0.1.1:8080 n1 active", "c1 10.0.1.2:8080 n2 active",
				"c2 10.1.1.1:8080 m1 active *", "c2 10.1.1.2:8080 m2 active *"},
		},
		{
			name:     "affinity remote fails back to local",
			localAnn: annGlobalRemote,
			local:    localBE,
			remotes:  map[string]map[string]string{"c2": annGlobal},
			dead:     []string{"c2/m1", "c2/m2"},
			// c2's backends on dead nodes are not listed: a frontend lists
			// at most as many remote backends taking no new connections as
			// usable remote ones (TestRemoteNonUsableBackendsLeaveRoomForOtherServices).
			want: []string{"c1 10.0.1.1:8080 n1 active *", "c1 10.0.1.2:8080 n2 active *"},
		},
		{
			name:     "affinity remote without remote clusters",
			localAnn: annGlobalRemote,
			local:    localBE,
			want:     []string{"c1 10.0.1.1:8080 n1 active *", "c1 10.0.1.2:8080 n2 active *"},
		},
		{
			name:     "remote not shared contributes nothing",
			localAnn: annGlobal,
			local:    localBE,
			remotes:  map[string]map[string]string{"c2": annNotShared},
			want:     []string{"c1 10.0.1.1:8080 n1 active *", "c1 10.0.1.2:8080 n2 active *"},
		},
		{
			name:     "remote not shared does not take over on failover",
			localAnn: annGlobalLocal,
			local:    localBE,
			remotes:  map[string]map[string]string{"c2": annNotShared},
			dead:     []string{"c1/n1", "c1/n2"},
			want:     []string{"c1 10.0.1.1:8080 n1 active dead", "c1 10.0.1.2:8080 n2 active dead"},
		},
		{
			name:     "remote not global contributes nothing",
			localAnn: annGlobal,
			local:    localBE,
			remotes:  map[string]map[string]string{"c2": nil, "c3": {AnnotationGlobal: "false", AnnotationShared: "true"}},
			want:     []string{"c1 10.0.1.1:8080 n1 active *", "c1 10.0.1.2:8080 n2 active *"},
		},
		{
			name:     "only the shared remote of two",
			localAnn: annGlobal,
			local:    localBE[:1],
			remotes:  map[string]map[string]string{"c2": annNotShared, "c3": annGlobal},
			want: []string{"c1 10.0.1.1:8080 n1 active *",
				"c3 10.1.1.1:8080 m1 active *", "c3 10.1.1.2:8080 m2 active *"},
		},
		{
			name:     "a remote under the local cluster's name is ignored",
			localAnn: annGlobal,
			local:    localBE[:1],
			remotes:  map[string]map[string]string{"c1": annGlobal},
			want:     []string{"c1 10.0.1.1:8080 n1 active *"},
		},
		{
			name:     "terminating and maintenance listed, not preferred",
			localAnn: annGlobal,
			local:    []Backend{be("10.0.1.1", "n1", StateTerminating), be("10.0.1.2", "n2", ""), be("10.0.1.3", "n3", StateMaintenance)},
			want:     []string{"c1 10.0.1.1:8080 n1 terminating", "c1 10.0.1.2:8080 n2 active *", "c1 10.0.1.3:8080 n3 maintenance"},
		},
		{
			name:  "dead node: unhealthy, not preferred",
			local: []Backend{be("10.0.1.1", "n1", ""), be("10.0.1.2", "n2", ""), be("10.0.1.3", "", "")},
			dead:  []string{"c1/n2", "c1/"},
			want:  []string{"c1 10.0.1.1:8080 n1 active *", "c1 10.0.1.2:8080 n2 active dead", "c1 10.0.1.3:8080  active *"},
		},
		{
			name:     "terminating on a dead node",
			localAnn: annGlobal,
			local:    []Backend{be("10.0.1.1", "n1", StateTerminating)},
			dead:     []string{"c1/n1"},
			want:     []string{"c1 10.0.1.1:8080 n1 terminating dead"},
		},
		{
			name: "nothing at all",
			want: []string{},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			local := mkSvc(t, tc.localAnn, httpPort, tc.local...)
			remotes := map[string]*Service{}
			for c, ann := range tc.remotes {
				remotes[c] = mkSvc(t, ann, httpPort, remoteBE...)
			}
			fe := local.Frontends(nil)[0]
			got := render(Select(local, remotes, "c1", fe, deadNodes(tc.dead...)))
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Select =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

func TestSelectNilAlive(t *testing.T) {
	local := mkSvc(t, nil, httpPort, be("10.0.1.1", "n1", ""))
	got := render(Select(local, nil, "c1", local.Frontends(nil)[0], nil))
	if want := []string{"c1 10.0.1.1:8080 n1 active *"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Select with nil Alive = %q, want %q", got, want)
	}
}

// TestSelectFailoverFailback walks one service through losing its local
// backends and getting them back.
func TestSelectFailoverFailback(t *testing.T) {
	local := mkSvc(t, annGlobalLocal, httpPort, be("10.0.1.1", "n1", ""), be("10.0.1.2", "n2", ""))
	remotes := map[string]*Service{"c2": mkSvc(t, annGlobal, httpPort, be("10.1.1.1", "m1", ""))}
	fe := local.Frontends(nil)[0]
	pref := func(dead ...string) []string {
		var out []string
		for _, a := range Preferred(Select(local, remotes, "c1", fe, deadNodes(dead...))) {
			out = append(out, a.String())
		}
		return out
	}
	steps := []struct {
		name   string
		change func()
		dead   []string
		want   []string
	}{
		{"all local", func() {}, nil, []string{"10.0.1.1:8080", "10.0.1.2:8080"}},
		{"n1 terminating", func() { local.Backends[0].State = StateTerminating }, nil, []string{"10.0.1.2:8080"}},
		{"n2 dead: failover", func() {}, []string{"c1/n2"}, []string{"10.1.1.1:8080"}},
		{"n2 back: failback", func() {}, nil, []string{"10.0.1.2:8080"}},
		{"n2 maintenance: failover", func() { local.Backends[1].State = StateMaintenance }, nil, []string{"10.1.1.1:8080"}},
		{"n1 active again: failback", func() { local.Backends[0].State = StateActive }, nil, []string{"10.0.1.1:8080"}},
		{"remote gone, local maintenance", func() {
			local.Backends[0].State = StateMaintenance
			delete(remotes, "c2")
		}, nil, nil},
	}
	for _, st := range steps {
		st.change()
		if got := pref(st.dead...); !reflect.DeepEqual(got, st.want) {
			t.Fatalf("%s: preferred = %q, want %q", st.name, got, st.want)
		}
	}
}

func TestSelectPorts(t *testing.T) {
	tests := []struct {
		name        string
		localPorts  []Port
		feIndex     int // which ClusterIP frontend of the local service
		remotePorts []Port
		remoteBE    Backend
		want        []string // addresses of the remote backends listed
	}{
		{
			name:        "by name, different targetPort",
			localPorts:  httpPort,
			remotePorts: []Port{{Name: "metrics", Port: 9100}, {Name: "http", Port: 8000, TargetPort: 9090}},
			remoteBE:    be("10.1.1.1", "m1", ""),
			want:        []string{"10.1.1.1:9090"},
		},
		{
			name:        "by name, backend names its port",
			localPorts:  httpPort,
			remotePorts: []Port{{Name: "http", Port: 80, TargetPort: 9090}},
			remoteBE:    Backend{IP: "10.1.1.1", Ports: map[string]uint16{"http": 9999}},
			want:        []string{"10.1.1.1:9999"},
		},
		{
			name:        "by name, protocol differs",
			localPorts:  httpPort,
			remotePorts: []Port{{Name: "http", Port: 80, Protocol: "UDP"}},
			remoteBE:    be("10.1.1.1", "m1", ""),
		},
		{
			name:        "by name, name differs though number matches",
			localPorts:  httpPort,
			remotePorts: []Port{{Name: "web", Port: 80, TargetPort: 8080}},
			remoteBE:    be("10.1.1.1", "m1", ""),
		},
		{
			name:        "named local, unnamed remote",
			localPorts:  httpPort,
			remotePorts: []Port{{Port: 80, TargetPort: 8080}},
			remoteBE:    be("10.1.1.1", "m1", ""),
		},
		{
			name:        "by number, different targetPort",
			localPorts:  []Port{{Port: 80, TargetPort: 8080}},
			remotePorts: []Port{{Port: 80, TargetPort: 7070}},
			remoteBE:    be("10.1.1.1", "m1", ""),
			want:        []string{"10.1.1.1:7070"},
		},
		{
			name:        "by number, remote without targetPort",
			localPorts:  []Port{{Port: 80, TargetPort: 8080}},
			remotePorts: []Port{{Port: 80}},
			remoteBE:    be("10.1.1.1", "m1", ""),
			want:        []string{"10.1.1.1:80"},
		},
		{
			name:        "by number, number differs",
			localPorts:  []Port{{Port: 80, TargetPort: 8080}},
			remotePorts: []Port{{Port: 81, TargetPort: 8080}},
			remoteBE:    be("10.1.1.1", "m1", ""),
		},
		{
			name:        "by number, protocol differs",
			localPorts:  []Port{{Port: 53, Protocol: "UDP"}},
			remotePorts: []Port{{Port: 53, Protocol: "TCP"}},
			remoteBE:    be("10.1.1.1", "m1", ""),
		},
		{
			name:        "by number, UDP",
			localPorts:  []Port{{Port: 53, Protocol: "UDP"}},
			remotePorts: []Port{{Port: 53, Protocol: "udp", TargetPort: 5353}},
			remoteBE:    be("10.1.1.1", "m1", ""),
			want:        []string{"10.1.1.1:5353"},
		},
		{
			name:        "second port of several",
			localPorts:  []Port{{Name: "http", Port: 80}, {Name: "dns", Port: 53, Protocol: "UDP"}},
			feIndex:     1,
			remotePorts: []Port{{Name: "dns", Port: 53, Protocol: "TCP", TargetPort: 1}, {Name: "http", Port: 80}},
			remoteBE:    be("10.1.1.1", "m1", ""),
			// TCP "dns" is not the UDP "dns": no match.
		},
		{
			name:        "second port of several, matching",
			localPorts:  []Port{{Name: "http", Port: 80}, {Name: "dns", Port: 53, Protocol: "UDP"}},
			feIndex:     1,
			remotePorts: []Port{{Name: "http", Port: 80}, {Name: "dns", Port: 5300, Protocol: "UDP", TargetPort: 5353}},
			remoteBE:    be("10.1.1.1", "m1", ""),
			want:        []string{"10.1.1.1:5353"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			local := mkSvc(t, annGlobal, tc.localPorts)
			remote := mkSvc(t, annGlobal, tc.remotePorts, tc.remoteBE)
			fe := local.Frontends(nil)[tc.feIndex]
			var got []string
			for _, v := range Select(local, map[string]*Service{"c2": remote}, "c1", fe, nil) {
				if v.Cluster != "c2" {
					t.Errorf("unexpected backend %+v", v)
				}
				got = append(got, v.Addr.String())
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("remote backends = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestSelectLocalBackendPorts(t *testing.T) {
	ports := []Port{{Name: "http", Port: 80, TargetPort: 8080}, {Name: "admin", Port: 81}}
	local := mkSvc(t, nil, ports,
		Backend{IP: "10.0.1.1", Ports: map[string]uint16{"http": 9000}},
		Backend{IP: "10.0.1.2"})
	fes := local.Frontends(nil)
	tests := []struct {
		fe   Frontend
		want []string
	}{
		{fes[0], []string{"10.0.1.1:9000", "10.0.1.2:8080"}},
		{fes[1], []string{"10.0.1.1:81", "10.0.1.2:81"}},
	}
	for _, tc := range tests {
		var got []string
		for _, a := range Preferred(Select(local, nil, "c1", tc.fe, nil)) {
			got = append(got, a.String())
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: backends %q, want %q", tc.fe, got, tc.want)
		}
	}
}

func TestSelectDeterministicOrder(t *testing.T) {
	localBE := []Backend{be("10.0.0.10", "n1", ""), be("10.0.0.9", "n2", ""), be("10.0.0.100", "n3", StateTerminating), be("9.0.0.1", "n4", "")}
	remoteBE := []Backend{be("10.0.0.2", "m1", ""), be("10.0.0.1", "m2", ""), be("1.1.1.1", "m3", "")}
	want := []string{
		"a 1.1.1.1:8080 m3 active *", "a 10.0.0.1:8080 m2 active *", "a 10.0.0.2:8080 m1 active *",
		"c1 9.0.0.1:8080 n4 active *", "c1 10.0.0.9:8080 n2 active *", "c1 10.0.0.10:8080 n1 active *", "c1 10.0.0.100:8080 n3 terminating",
		"z 1.1.1.1:8080 m3 active *", "z 10.0.0.1:8080 m2 active *", "z 10.0.0.2:8080 m1 active *",
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 50 {
		l, r := slices.Clone(localBE), slices.Clone(remoteBE)
		rng.Shuffle(len(l), func(i, j int) { l[i], l[j] = l[j], l[i] })
		rng.Shuffle(len(r), func(i, j int) { r[i], r[j] = r[j], r[i] })
		local := mkSvc(t, annGlobal, httpPort, l...)
		r2 := slices.Clone(r)
		rng.Shuffle(len(r2), func(i, j int) { r2[i], r2[j] = r2[j], r2[i] })
		remotes := map[string]*Service{"z": mkSvc(t, annGlobal, httpPort, r...), "a": mkSvc(t, annGlobal, httpPort, r2...)}
		got := render(Select(local, remotes, "c1", local.Frontends(nil)[0], nil))
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("round %d: Select =\n%s\nwant\n%s", i, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
}

func TestPreferred(t *testing.T) {
	a := netip.MustParseAddrPort("10.0.0.1:80")
	b := netip.MustParseAddrPort("10.0.0.2:80")
	c := netip.MustParseAddrPort("10.0.0.3:80")
	got := Preferred([]BackendView{{Addr: a, Preferred: true}, {Addr: b}, {Addr: c, Preferred: true}})
	if want := []netip.AddrPort{a, c}; !reflect.DeepEqual(got, want) {
		t.Errorf("Preferred = %v, want %v", got, want)
	}
	if got := Preferred(nil); got != nil {
		t.Errorf("Preferred(nil) = %v, want nil", got)
	}
}

// A frontend's backends are at most MaxBackends (the datapath's count is
// 16 bits): the local cluster's first, then remote clusters' shared
// between them (remoteShares), the rest left out. Found 2026-12-05 by reading the
// datapath writer: a remote cluster's global service of 65,535 backends
// beside one local backend made a count of 0, and the frontend lost its
// local backend too.
func TestSelectBoundedByMaxBackends(t *testing.T) {
	local := mkSvc(t, annGlobal, httpPort, be("10.0.1.1", "n1", ""))
	var many []Backend
	base := netip.MustParseAddr("10.2.0.1")
	for range MaxBackends {
		many = append(many, Backend{IP: base.String(), Node: "m1"})
		base = base.Next()
	}
	remote := mkSvc(t, annGlobal, httpPort, many...)
	fe := local.Frontends(nil)[0]
	got := Select(local, map[string]*Service{"c2": remote}, "c1", fe, nil)
	if len(got) != MaxBackends {
		t.Fatalf("%d backends, want %d", len(got), MaxBackends)
	}
	if got[0].Cluster != "c1" || got[0].Addr.Addr() != netip.MustParseAddr("10.0.1.1") {
		t.Errorf("the local backend was left out: first is %v", got[0])
	}
	// The one left out is the last by a hash of the address
	// (remoteShares), not by address.
	listed := map[netip.AddrPort]bool{}
	for _, v := range got {
		listed[v.Addr] = true
	}
	var addrs []netip.AddrPort
	for _, b := range many {
		addrs = append(addrs, netip.AddrPortFrom(netip.MustParseAddr(b.IP), 8080))
	}
	order := hashOrder(addrs)
	if last := addrs[order[len(order)-1]]; listed[last] || !listed[addrs[len(addrs)-1]] {
		t.Errorf("left out: %s listed %v, the last address %v", last, listed[last], listed[addrs[len(addrs)-1]])
	}
}

// remoteSvcN is a remote cluster's global service "web" with n backends
// at prefix.<i/250>.<i%250+1> in state.
func remoteSvcN(t *testing.T, prefix string, n int, state string) *Service {
	t.Helper()
	var bs []Backend
	for i := range n {
		bs = append(bs, be(fmt.Sprintf("%s.%d.%d", prefix, i/250, i%250+1), "m1", state))
	}
	return mkSvc(t, annGlobal, httpPort, bs...)
}

// countByCluster counts a selection's backends by cluster, "usable" ones
// (active, node alive) apart: "cluster" and "cluster usable".
func countByCluster(v []BackendView) map[string]int {
	out := map[string]int{}
	for _, b := range v {
		out[b.Cluster]++
		if usable(b) {
			out[b.Cluster+" usable"]++
		}
	}
	return out
}

// Past the node's remote-backend room a frontend divides it between the
// remote clusters fairly: an equal share each, what a cluster leaves of
// its share to the others, usable backends (active, node alive) before
// the rest (at most as many of those as of the usable ones, none while
// the bound binds), and within a cluster by a hash of the address. Until a
// review found it the room was filled in order of cluster and address,
// terminating backends included: a remote named aaa publishing 100
// terminating backends filled a room of 100, bravo's 10 active ones were
// left out, and a graded local level 3 of 10 healthy took every new
// connection.
func TestSelectBoundedSharesRemoteRoomFairly(t *testing.T) {
	local := mkSvc(t, annGraded, httpPort, local3of10()...)
	fe := local.Frontends(nil)[0]
	both := func(a, b *Service) map[string]*Service { return map[string]*Service{"aaa": a, "bravo": b} }
	tests := []struct {
		name    string
		remotes map[string]*Service
		room    int
		want    map[string]int
	}{
		{"terminating ones last, as many as the usable ones", both(remoteSvcN(t, "10.2", 100, StateTerminating), remoteSvcN(t, "10.3", 10, "")), 100,
			map[string]int{"c1": 10, "c1 usable": 3, "aaa": 10, "bravo": 10, "bravo usable": 10}},
		{"terminating ones up to the usable ones", both(remoteSvcN(t, "10.2", 100, StateTerminating), remoteSvcN(t, "10.3", 30, "")), 100,
			map[string]int{"c1": 10, "c1 usable": 3, "aaa": 30, "bravo": 30, "bravo usable": 30}},
		{"an equal share each", both(remoteSvcN(t, "10.2", 200, ""), remoteSvcN(t, "10.3", 200, "")), 100,
			map[string]int{"c1": 10, "c1 usable": 3, "aaa": 50, "aaa usable": 50, "bravo": 50, "bravo usable": 50}},
		{"a share left to the other", both(remoteSvcN(t, "10.2", 10, ""), remoteSvcN(t, "10.3", 200, "")), 100,
			map[string]int{"c1": 10, "c1 usable": 3, "aaa": 10, "aaa usable": 10, "bravo": 90, "bravo usable": 90}},
		{"no terminating ones while the bound binds", both(remoteSvcN(t, "10.2", 100, StateTerminating), remoteSvcN(t, "10.3", 30, "")), 50,
			map[string]int{"c1": 10, "c1 usable": 3, "bravo": 30, "bravo usable": 30}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, _, _ := selectBounded(local, tc.remotes, "c1", fe, nil, tc.room)
			if got := countByCluster(v); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("listed %v, want %v", got, tc.want)
			}
		})
	}
	// The first case's split: bravo's share, not all local.
	v, _, pub := selectBounded(local, tests[0].remotes, "c1", fe, nil, 100)
	if got := shares(gradedSplit(v, "c1", pub)); got != "c1 3/10 420000, aaa 0/100 0, bravo 10/10 580000" {
		t.Errorf("split %s", got)
	}
	// Within a cluster the backends listed are spread over its addresses
	// (a hash of each), not the first ones: of aaa's 300, 100 listed,
	// about a third of them in its first 100 addresses.
	v, _, _ = selectBounded(local, map[string]*Service{"aaa": remoteSvcN(t, "10.2", 300, "")}, "c1", fe, nil, 100)
	first := 0
	for _, b := range v {
		if b.Cluster == "aaa" && b.Addr.Addr().As4()[3] <= 100 && b.Addr.Addr().As4()[2] == 0 {
			first++
		}
	}
	if first < 15 || first > 52 {
		t.Errorf("%d of the 100 listed of aaa's 300 are its first 100 addresses", first)
	}
}

func TestFairShares(t *testing.T) {
	tests := []struct {
		room      int
		want, got []int
	}{
		{100, []int{100, 10}, []int{90, 10}},
		{100, []int{200, 200}, []int{50, 50}},
		{10, []int{3, 3, 3, 3}, []int{3, 3, 2, 2}},
		{10, []int{1, 50, 2, 50}, []int{1, 4, 2, 3}},
		{100, []int{1, 2}, []int{1, 2}},
		{0, []int{5, 5}, []int{0, 0}},
		{-3, []int{5}, []int{0}},
		{7, nil, []int{}},
	}
	for _, tc := range tests {
		if got := fairShares(tc.room, tc.want); !reflect.DeepEqual(got, tc.got) {
			t.Errorf("fairShares(%d, %v) = %v, want %v", tc.room, tc.want, got, tc.got)
		}
	}
	// Random ones: all of the room used while a part wants more, none
	// more than it wants, and a part short of its want has at least
	// what any other has, less one.
	r := rand.New(rand.NewPCG(3, 4))
	for range 2000 {
		want := make([]int, r.IntN(6))
		sum := 0
		for i := range want {
			want[i] = r.IntN(30)
			sum += want[i]
		}
		room := r.IntN(80)
		got := fairShares(room, want)
		total := 0
		for i, n := range got {
			total += n
			if n < 0 || n > want[i] {
				t.Fatalf("fairShares(%d, %v) = %v", room, want, got)
			}
			for _, o := range got {
				if n < want[i] && n < o-1 {
					t.Fatalf("fairShares(%d, %v) = %v: not fair", room, want, got)
				}
			}
		}
		if total != min(room, sum) {
			t.Fatalf("fairShares(%d, %v) = %v: %d given", room, want, got, total)
		}
	}
}
