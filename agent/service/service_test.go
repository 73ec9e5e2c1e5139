package service

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestParseValidClusterIP(t *testing.T) {
	s, err := Parse([]byte(`
metadata:
  name: web
spec:
  clusterIP: 10.96.0.10
  ports:
  - port: 80
    targetPort: 8080
backends:
- ip: 10.0.1.1
  node: n1
- ip: 10.0.1.2
  node: n2
  state: terminating
`))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if s.Metadata.Namespace != "default" {
		t.Errorf("namespace = %q, want default", s.Metadata.Namespace)
	}
	if s.Key() != "default/web" {
		t.Errorf("Key() = %q, want default/web", s.Key())
	}
	if s.Spec.Type != "ClusterIP" {
		t.Errorf("type = %q, want ClusterIP", s.Spec.Type)
	}
	if got := s.Spec.Ports[0].Protocol; got != "TCP" {
		t.Errorf("protocol = %q, want TCP", got)
	}
	if got := s.Spec.Ports[0].Target(); got != 8080 {
		t.Errorf("Target() = %d, want 8080", got)
	}
	if got := s.Backends[0].State; got != StateActive {
		t.Errorf("backends[0].state = %q, want active", got)
	}
	if got := s.Backends[1].State; got != StateTerminating {
		t.Errorf("backends[1].state = %q, want terminating", got)
	}
	if got := s.Algorithm("random"); got != "random" {
		t.Errorf("Algorithm(random) = %q, want the default", got)
	}
}

func TestParseValidNodePort(t *testing.T) {
	s, err := Parse([]byte(`
apiVersion: filament.io/v1
kind: Service
metadata:
  name: np
  namespace: prod
spec:
  type: NodePort
  ports:
  - name: http
    port: 80
    nodePort: 30080
    protocol: udp
  - name: https
    port: 443
    targetPort: 8443
    nodePort: 30443
  sessionAffinity: ClientIP
  loadBalancerAlgorithm: maglev
backends:
- ip: 10.0.1.1
  ports: {https: 9443}
`))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if s.Metadata.Namespace != "prod" || s.Spec.Type != "NodePort" {
		t.Errorf("namespace/type = %q/%q, want prod/NodePort", s.Metadata.Namespace, s.Spec.Type)
	}
	if p := s.Spec.Ports; p[0].Protocol != "UDP" || p[1].Protocol != "TCP" {
		t.Errorf("protocols = %q %q, want UDP TCP (normalised, defaulted)", p[0].Protocol, p[1].Protocol)
	}
	if s.Backends[0].State != StateActive {
		t.Errorf("state = %q, want active", s.Backends[0].State)
	}
	if got := s.Backends[0].BackendPort(s.Spec.Ports[1]); got != 9443 {
		t.Errorf("BackendPort(https) = %d, want 9443 (named)", got)
	}
	if got := s.Backends[0].BackendPort(s.Spec.Ports[0]); got != 80 {
		t.Errorf("BackendPort(http) = %d, want 80 (port)", got)
	}
	if got := s.AffinityTimeout(); got != DefaultAffinityTimeout {
		t.Errorf("AffinityTimeout = %d, want %d", got, DefaultAffinityTimeout)
	}
	if got := s.Algorithm("random"); got != "maglev" {
		t.Errorf("Algorithm = %q, want maglev", got)
	}
}

// base is a valid service with every field the bad cases change; each case
// replaces one line.
const base = `
metadata:
  name: web
  annotations: {}
spec:
  type: ClusterIP
  clusterIP: 10.96.0.10
  ports:
  - {name: http, port: 80, targetPort: 8080}
  sessionAffinity: None
  loadBalancerAlgorithm: random
backends:
- {ip: 10.0.1.1, state: active}
`

func TestParseBaseIsValid(t *testing.T) {
	if _, err := Parse([]byte(base)); err != nil {
		t.Fatalf("base: %v", err)
	}
}

func TestParseInvalid(t *testing.T) {
	tests := []struct {
		name     string
		old, new string // replace old by new in base
		want     []string
	}{
		{"unknown top field", "backends:", "bogus: 1\nbackends:", []string{"bogus"}},
		{"unknown spec field", "  sessionAffinity: None", "  sessionAffinity: None\n  externalIPs: [1.2.3.4]", []string{"externalIPs"}},
		{"apiVersion", "metadata:", "apiVersion: apps/v1\nmetadata:", []string{"apiVersion", `"apps/v1"`}},
		{"kind", "metadata:", "kind: Pod\nmetadata:", []string{"kind", `"Pod"`}},
		{"name upper case", "name: web", "name: Web", []string{"metadata.name", `"Web"`}},
		{"name underscore", "name: web", "name: my_web", []string{"metadata.name", `"my_web"`}},
		{"name empty", "name: web", `name: ""`, []string{"metadata.name", `""`}},
		{"name too long", "name: web", "name: " + strings.Repeat("a", 64), []string{"metadata.name", strings.Repeat("a", 64)}},
		{"name trailing dash", "name: web", "name: web-", []string{"metadata.name", `"web-"`}},
		{"namespace", "name: web", "name: web\n  namespace: Kube.System", []string{"metadata.namespace", `"Kube.System"`}},
		{"type", "type: ClusterIP", "type: LoadBalancer", []string{"spec.type", `"LoadBalancer"`}},
		{"clusterIP octet", "clusterIP: 10.96.0.10", "clusterIP: 10.96.0.300", []string{"spec.clusterIP", `"10.96.0.300"`}},
		{"clusterIP v6", "clusterIP: 10.96.0.10", `clusterIP: "fd00::1"`, []string{"spec.clusterIP", `"fd00::1"`}},
		{"clusterIP unspecified", "clusterIP: 10.96.0.10", "clusterIP: 0.0.0.0", []string{"spec.clusterIP", `"0.0.0.0"`}},
		{"clusterIP loopback", "clusterIP: 10.96.0.10", "clusterIP: 127.0.0.1", []string{"spec.clusterIP", "127.0.0.1", "loopback"}},
		{"clusterIP multicast", "clusterIP: 10.96.0.10", "clusterIP: 224.0.0.251", []string{"spec.clusterIP", "224.0.0.251", "multicast"}},
		{"clusterIP link-local", "clusterIP: 10.96.0.10", "clusterIP: 169.254.169.254", []string{"spec.clusterIP", "169.254.169.254", "link-local"}},
		{"clusterIP this network", "clusterIP: 10.96.0.10", "clusterIP: 0.1.2.3", []string{"spec.clusterIP", "0.1.2.3", "0.0.0.0/8"}},
		{"clusterIP broadcast", "clusterIP: 10.96.0.10", "clusterIP: 255.255.255.255", []string{"spec.clusterIP", "broadcast"}},
		{"clusterIP missing", "  clusterIP: 10.96.0.10\n", "", []string{"spec.clusterIP", "ClusterIP"}},
		{"no ports", "  ports:\n  - {name: http, port: 80, targetPort: 8080}", "  ports: []", []string{"spec.ports"}},
		{"ports absent", "  ports:\n  - {name: http, port: 80, targetPort: 8080}\n", "", []string{"spec.ports"}},
		{"port 0", "port: 80,", "port: 0,", []string{"spec.ports[0].port", " 0:"}},
		{"port too large", "port: 80,", "port: 70000,", []string{"70000"}},
		{"protocol", "port: 80,", "port: 80, protocol: SCTP,", []string{"spec.ports[0].protocol", `"SCTP"`}},
		{"nodePort on ClusterIP", "port: 80,", "port: 80, nodePort: 30080,", []string{"spec.ports[0].nodePort", "30080", "NodePort"}},
		{"multiple ports unnamed", "  - {name: http, port: 80, targetPort: 8080}", "  - {name: http, port: 80, targetPort: 8080}\n  - {port: 81}", []string{"spec.ports[1].name", "required"}},
		{"duplicate port", "  - {name: http, port: 80, targetPort: 8080}", "  - {name: http, port: 80, targetPort: 8080}\n  - {name: alt, port: 80, protocol: TCP}", []string{"spec.ports[1]", "80/TCP", "twice"}},
		{"duplicate port name", "  - {name: http, port: 80, targetPort: 8080}", "  - {name: http, port: 80, targetPort: 8080}\n  - {name: http, port: 81}", []string{"spec.ports[1].name", `"http"`, "duplicate"}},
		{"sessionAffinity", "sessionAffinity: None", "sessionAffinity: Sticky", []string{"spec.sessionAffinity", `"Sticky"`}},
		{"sessionAffinity lower case", "sessionAffinity: None", "sessionAffinity: clientip", []string{"spec.sessionAffinity", `"clientip"`}},
		{"timeout 0", "sessionAffinity: None", "sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}", []string{"spec.sessionAffinityConfig.clientIP.timeoutSeconds", " 0:"}},
		{"timeout too long", "sessionAffinity: None", "sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 86401}}", []string{"spec.sessionAffinityConfig.clientIP.timeoutSeconds", "86401"}},
		{"timeout negative", "sessionAffinity: None", "sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: -5}}", []string{"spec.sessionAffinityConfig.clientIP.timeoutSeconds", "-5"}},
		{"algorithm", "loadBalancerAlgorithm: random", "loadBalancerAlgorithm: roundrobin", []string{"spec.loadBalancerAlgorithm", `"roundrobin"`}},
		{"backend ip", "ip: 10.0.1.1,", "ip: 10.0.1,", []string{"backends[0].ip", `"10.0.1"`}},
		{"backend ip v6", "ip: 10.0.1.1,", `ip: "fd00::5",`, []string{"backends[0].ip", `"fd00::5"`}},
		{"backend loopback", "ip: 10.0.1.1,", "ip: 127.0.0.53,", []string{"backends[0].ip", "127.0.0.53", "loopback"}},
		{"backend link-local", "ip: 10.0.1.1,", "ip: 169.254.169.254,", []string{"backends[0].ip", "169.254.169.254", "link-local"}},
		{"backend ip duplicate", "- {ip: 10.0.1.1, state: active}", "- {ip: 10.0.1.1, state: active}\n- {ip: 10.0.1.1}", []string{"backends[1].ip", "10.0.1.1", "duplicate"}},
		{"backend unknown port name", "ip: 10.0.1.1,", "ip: 10.0.1.1, ports: {metrics: 9090},", []string{"backends[0].ports[metrics]"}},
		{"backend port 0", "ip: 10.0.1.1,", "ip: 10.0.1.1, ports: {http: 0},", []string{"backends[0].ports[http]", " 0:"}},
		{"backend state", "state: active", "state: draining", []string{"backends[0].state", `"draining"`}},
		// A node name (until 2026-12-07 unchecked: a remote cluster's
		// escape sequences reached service list's NODE column).
		{"backend node escapes", "ip: 10.0.1.1,", `ip: 10.0.1.1, node: "n1\e[2J\e]0;owned\a",`, []string{"backends[0].node", `"n1\x1b[2J`}},
		{"backend node upper case", "ip: 10.0.1.1,", `ip: 10.0.1.1, node: Node1,`, []string{"backends[0].node", `"Node1"`}},
		{"backend node too long", "ip: 10.0.1.1,", `ip: 10.0.1.1, node: ` + strings.Repeat("n", 254) + `,`, []string{"backends[0].node"}},
		{"global yes", "annotations: {}", `annotations: {service.cilium.io/global: "yes"}`, []string{"metadata.annotations[service.cilium.io/global]", `"yes"`}},
		{"legacy global yes", "annotations: {}", `annotations: {io.cilium/global-service: "yes"}`, []string{"metadata.annotations[io.cilium/global-service]", `"yes"`}},
		{"shared maybe", "annotations: {}", `annotations: {service.cilium.io/global: "true", service.cilium.io/shared: "maybe"}`, []string{"metadata.annotations[service.cilium.io/shared]", `"maybe"`}},
		{"legacy shared maybe", "annotations: {}", `annotations: {io.cilium/global-service: "true", io.cilium/shared-service: "maybe"}`, []string{"metadata.annotations[io.cilium/shared-service]", `"maybe"`}},
		{"affinity nearest", "annotations: {}", `annotations: {service.cilium.io/global: "true", service.cilium.io/affinity: "nearest"}`, []string{"metadata.annotations[service.cilium.io/affinity]", `"nearest"`}},
		{"legacy affinity nearest", "annotations: {}", `annotations: {io.cilium/global-service: "true", io.cilium/service-affinity: "nearest"}`, []string{"metadata.annotations[io.cilium/service-affinity]", `"nearest"`}},
		{"failover unknown", "annotations: {}", `annotations: {service.cilium.io/global: "true", service.cilium.io/affinity: local, service.filament.io/failover: gradual}`, []string{"metadata.annotations[service.filament.io/failover]", `"gradual"`, "not graded"}},
		{"failover upper case", "annotations: {}", `annotations: {service.cilium.io/global: "true", service.cilium.io/affinity: local, service.filament.io/failover: Graded}`, []string{"metadata.annotations[service.filament.io/failover]", `"Graded"`}},
		{"failover empty", "annotations: {}", `annotations: {service.cilium.io/global: "true", service.cilium.io/affinity: local, service.filament.io/failover: ""}`, []string{"metadata.annotations[service.filament.io/failover]", `""`}},
		{"failover control bytes", "annotations: {}", `annotations: {service.cilium.io/global: "true", service.cilium.io/affinity: local, service.filament.io/failover: "graded\n\u0000"}`, []string{"metadata.annotations[service.filament.io/failover]", `"graded\n\x00"`}},
		{"failover not global", "annotations: {}", `annotations: {service.cilium.io/affinity: local, service.filament.io/failover: graded}`, []string{"metadata.annotations[service.filament.io/failover]", `"graded"`, "global"}},
		{"failover global false", "annotations: {}", `annotations: {service.cilium.io/global: "false", service.cilium.io/affinity: local, service.filament.io/failover: graded}`, []string{"metadata.annotations[service.filament.io/failover]", "global"}},
		{"failover without affinity", "annotations: {}", `annotations: {service.cilium.io/global: "true", service.filament.io/failover: graded}`, []string{"metadata.annotations[service.filament.io/failover]", "affinity", `"none"`}},
		{"failover affinity remote", "annotations: {}", `annotations: {service.cilium.io/global: "true", service.cilium.io/affinity: remote, service.filament.io/failover: graded}`, []string{"metadata.annotations[service.filament.io/failover]", `"remote"`}},
	}
	for _, tc := range tests {
		if !strings.Contains(base, tc.old) {
			t.Fatalf("%s: %q is not in base", tc.name, tc.old)
		}
		t.Run(tc.name, func(t *testing.T) {
			checkInvalid(t, strings.Replace(base, tc.old, tc.new, 1), tc.want)
		})
	}
}

func TestParseInvalidNodePort(t *testing.T) {
	np := `
metadata: {name: np}
spec:
  type: NodePort
  ports:
  - {name: http, port: 80, nodePort: NP}
`
	for _, tc := range []struct {
		name string
		yaml string
		want []string
	}{
		{"below range", strings.Replace(np, "NP", "8080", 1), []string{"spec.ports[0].nodePort", "8080", "30000-32767"}},
		{"above range", strings.Replace(np, "NP", "32768", 1), []string{"spec.ports[0].nodePort", "32768"}},
		{"missing", strings.Replace(np, ", nodePort: NP", "", 1), []string{"spec.ports[0].nodePort", " 0:"}},
		{"twice", strings.Replace(np, "NP", "30080", 1) + "  - {name: alt, port: 81, nodePort: 30080}\n", []string{"spec.ports[1].nodePort", "30080/TCP"}},
	} {
		t.Run(tc.name, func(t *testing.T) { checkInvalid(t, tc.yaml, tc.want) })
	}
	// The same nodePort number for TCP and UDP is two frontends.
	ok := strings.Replace(np, "NP", "30053", 1) + "  - {name: dns, port: 80, protocol: UDP, nodePort: 30053}\n"
	if _, err := Parse([]byte(ok)); err != nil {
		t.Errorf("nodePort 30053 for TCP and UDP: %v", err)
	}
}

func checkInvalid(t *testing.T, yaml string, want []string) {
	t.Helper()
	s, err := Parse([]byte(yaml))
	if err == nil {
		t.Fatalf("Parse accepted:\n%s\nas %+v", yaml, s)
	}
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("error %q does not wrap ErrInvalid", err)
	}
	if s != nil {
		t.Errorf("Parse returned a service with its error")
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not mention %q", err, w)
		}
	}
}

func TestOptions(t *testing.T) {
	tests := []struct {
		name string
		ann  map[string]string
		want Options
	}{
		{"none", nil, Options{Affinity: AffinityNone}},
		{"global", map[string]string{AnnotationGlobal: "true"}, Options{Global: true, Shared: true, Affinity: AffinityNone}},
		{"global false", map[string]string{AnnotationGlobal: "false"}, Options{Affinity: AffinityNone}},
		{"global not shared", map[string]string{AnnotationGlobal: "true", AnnotationShared: "false"}, Options{Global: true, Affinity: AffinityNone}},
		{"shared without global", map[string]string{AnnotationShared: "true"}, Options{Affinity: AffinityNone}},
		{"legacy global", map[string]string{AnnotationGlobalLegacy: "true"}, Options{Global: true, Shared: true, Affinity: AffinityNone}},
		{"legacy shared false", map[string]string{AnnotationGlobalLegacy: "true", AnnotationSharedLegacy: "false"}, Options{Global: true, Affinity: AffinityNone}},
		{"legacy affinity", map[string]string{AnnotationGlobalLegacy: "true", AnnotationAffinityLegacy: "remote"}, Options{Global: true, Shared: true, Affinity: AffinityRemote}},
		{"current name wins", map[string]string{AnnotationGlobal: "false", AnnotationGlobalLegacy: "true"}, Options{Affinity: AffinityNone}},
		{"affinity Local", map[string]string{AnnotationGlobal: "true", AnnotationAffinity: "Local"}, Options{Global: true, Shared: true, Affinity: AffinityLocal}},
		{"affinity REMOTE", map[string]string{AnnotationGlobal: "true", AnnotationAffinity: "REMOTE"}, Options{Global: true, Shared: true, Affinity: AffinityRemote}},
		{"affinity None", map[string]string{AnnotationGlobal: "true", AnnotationAffinity: "None"}, Options{Global: true, Shared: true, Affinity: AffinityNone}},
		{"failover graded", map[string]string{AnnotationGlobal: "true", AnnotationAffinity: "local", AnnotationFailover: "graded"}, Options{Global: true, Shared: true, Affinity: AffinityLocal, Failover: FailoverGraded}},
		{"failover graded legacy names", map[string]string{AnnotationGlobalLegacy: "true", AnnotationAffinityLegacy: "Local", AnnotationFailover: "graded"}, Options{Global: true, Shared: true, Affinity: AffinityLocal, Failover: FailoverGraded}},
		{"failover graded not shared", map[string]string{AnnotationGlobal: "true", AnnotationShared: "false", AnnotationAffinity: "local", AnnotationFailover: "graded"}, Options{Global: true, Affinity: AffinityLocal, Failover: FailoverGraded}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := &Service{Metadata: Metadata{Name: "web", Annotations: tc.ann},
				Spec: Spec{ClusterIP: "10.96.0.10", Ports: []Port{{Port: 80}}}}
			if err := s.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if got := s.Options(); got != tc.want {
				t.Errorf("Options() = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestAffinityTimeout(t *testing.T) {
	secs := func(v int32) *SessionAffinityConfig {
		return &SessionAffinityConfig{ClientIP: &ClientIPConfig{TimeoutSeconds: &v}}
	}
	tests := []struct {
		name     string
		affinity string
		cfg      *SessionAffinityConfig
		want     uint32
	}{
		{"unset", "", nil, 0},
		{"None", "None", nil, 0},
		{"None with config", "None", secs(60), 0},
		{"ClientIP default", "ClientIP", nil, DefaultAffinityTimeout},
		{"ClientIP empty config", "ClientIP", &SessionAffinityConfig{}, DefaultAffinityTimeout},
		{"ClientIP configured", "ClientIP", secs(60), 60},
		{"ClientIP max", "ClientIP", secs(86400), 86400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := &Service{Metadata: Metadata{Name: "web"}, Spec: Spec{ClusterIP: "10.96.0.10", Ports: []Port{{Port: 80}},
				SessionAffinity: tc.affinity, SessionAffinityConfig: tc.cfg}}
			if err := s.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if got := s.AffinityTimeout(); got != tc.want {
				t.Errorf("AffinityTimeout() = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestFrontends(t *testing.T) {
	n1, n2 := netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("192.168.0.2")
	tests := []struct {
		name    string
		spec    Spec
		nodeIPs []netip.Addr
		want    []string // String() and Type
	}{
		{"ClusterIP per port", Spec{ClusterIP: "10.96.0.10", Ports: []Port{{Name: "http", Port: 80}, {Name: "dns", Port: 53, Protocol: "UDP"}}},
			[]netip.Addr{n1, n2},
			[]string{"10.96.0.10:80/TCP ClusterIP http", "10.96.0.10:53/UDP ClusterIP dns"}},
		{"NodePort with clusterIP", Spec{Type: "NodePort", ClusterIP: "10.96.0.10", Ports: []Port{{Name: "http", Port: 80, NodePort: 30080}, {Name: "dns", Port: 53, Protocol: "UDP", NodePort: 30053}}},
			[]netip.Addr{n1, n2},
			[]string{"10.96.0.10:80/TCP ClusterIP http", "192.168.0.1:30080/TCP NodePort http", "192.168.0.2:30080/TCP NodePort http",
				"10.96.0.10:53/UDP ClusterIP dns", "192.168.0.1:30053/UDP NodePort dns", "192.168.0.2:30053/UDP NodePort dns"}},
		{"NodePort without clusterIP", Spec{Type: "NodePort", Ports: []Port{{Port: 80, NodePort: 30080}}},
			[]netip.Addr{n2},
			[]string{"192.168.0.2:30080/TCP NodePort "}},
		{"NodePort without node IPs", Spec{Type: "NodePort", Ports: []Port{{Port: 80, NodePort: 30080}}}, nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := &Service{Metadata: Metadata{Name: "web"}, Spec: tc.spec}
			if err := s.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			var got []string
			for _, fe := range s.Frontends(tc.nodeIPs) {
				got = append(got, fe.String()+" "+fe.Type+" "+fe.PortName)
				if fe.port.Port == 0 || fe.port.Name != fe.PortName {
					t.Errorf("%s: service port %+v not recorded", fe, fe.port)
				}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Frontends =\n%q\nwant\n%q", got, tc.want)
			}
		})
	}
}

func TestValidAlgorithm(t *testing.T) {
	for a, ok := range map[string]bool{"random": true, "maglev": true, "": false, "Maglev": false, "rr": false} {
		if err := ValidAlgorithm(a); (err == nil) != ok {
			t.Errorf("ValidAlgorithm(%q) = %v, want ok=%t", a, err, ok)
		}
	}
}

func TestMaglevTableOrderIndependent(t *testing.T) {
	a := []netip.AddrPort{netip.MustParseAddrPort("10.0.0.1:80"), netip.MustParseAddrPort("10.0.0.2:80"), netip.MustParseAddrPort("10.0.0.3:80")}
	b := []netip.AddrPort{a[2], a[0], a[1]}
	ta, err := MaglevTable(a, 251)
	if err != nil {
		t.Fatal(err)
	}
	tb, err := MaglevTable(b, 251)
	if err != nil {
		t.Fatal(err)
	}
	if len(ta) != 251 || len(tb) != 251 {
		t.Fatalf("table sizes %d %d, want 251", len(ta), len(tb))
	}
	for i := range ta {
		if a[ta[i]] != b[tb[i]] {
			t.Fatalf("slot %d: %s vs %s: the table depends on the order", i, a[ta[i]], b[tb[i]])
		}
	}
}
