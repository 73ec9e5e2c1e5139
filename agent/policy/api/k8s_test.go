package api

import (
	"testing"

	"github.com/filament-net/filament/agent/labels"
)

func mustLabels(t *testing.T, s string) labels.Labels {
	t.Helper()
	ls, err := labels.ParseList(s)
	if err != nil {
		t.Fatalf("labels %q: %v", s, err)
	}
	return ls
}

func TestParseNetworkPolicy(t *testing.T) {
	const input = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web
  namespace: prod
spec:
  podSelector:
    matchLabels: {app: web}
  ingress:
  - from:
    - podSelector: {matchLabels: {role: frontend}}
    - namespaceSelector: {matchLabels: {team: ops}}
    - namespaceSelector: {matchExpressions: [{key: env, operator: In, values: [staging]}]}
      podSelector: {matchLabels: {role: probe}}
    - ipBlock: {cidr: 172.16.0.0/12, except: [172.16.1.0/24]}
    ports:
    - port: 80
    - {protocol: UDP, port: dns}
    - {port: 8000, endPort: 8080}
  egress:
  - ports: [{protocol: UDP, port: 53}]
  - to: [{podSelector: {}}]
`
	p := parseOne(t, input)
	check(t, "Kind", p.Kind, KindNetworkPolicy)
	check(t, "Key", p.Key(), "prod/networkpolicy/web")
	check(t, "LegacyKey", p.LegacyKey(), "prod/web")
	check(t, "Source", p.Source, input)
	if len(p.Rules) != 1 {
		t.Fatalf("got %d rules, want 1", len(p.Rules))
	}
	r := p.Rules[0]
	if !r.IngressDefaultDeny() || !r.EgressDefaultDeny() {
		t.Errorf("default deny = %v/%v, want true/true (egress rules imply policyType Egress)", r.IngressDefaultDeny(), r.EgressDefaultDeny())
	}
	if len(r.Ingress) != 1 || len(r.Egress) != 2 {
		t.Fatalf("got %d ingress and %d egress rules, want 1 and 2", len(r.Ingress), len(r.Egress))
	}
	in := r.Ingress[0]
	if len(in.FromEndpoints) != 3 {
		t.Fatalf("got %d fromEndpoints, want 3", len(in.FromEndpoints))
	}

	// Selectors are checked by what they select.
	selects := []struct {
		name   string
		sel    *EndpointSelector
		labels string
		want   bool
	}{
		{"podSelector: web pod in prod", r.EndpointSelector, "k8s:app=web,k8s:io.kubernetes.pod.namespace=prod", true},
		{"podSelector: web pod in dev", r.EndpointSelector, "k8s:app=web,k8s:io.kubernetes.pod.namespace=dev", false},
		{"podSelector: web label of another source", r.EndpointSelector, "container:app=web,k8s:io.kubernetes.pod.namespace=prod", false},
		{"peer podSelector: frontend in prod", &in.FromEndpoints[0], "k8s:role=frontend,k8s:io.kubernetes.pod.namespace=prod", true},
		{"peer podSelector: frontend in dev", &in.FromEndpoints[0], "k8s:role=frontend,k8s:io.kubernetes.pod.namespace=dev", false},
		{"peer namespaceSelector: any pod of an ops namespace", &in.FromEndpoints[1],
			"k8s:app=x,k8s:io.kubernetes.pod.namespace=tools,k8s:io.cilium.k8s.namespace.labels.team=ops", true},
		{"peer namespaceSelector: pod of another team", &in.FromEndpoints[1],
			"k8s:io.kubernetes.pod.namespace=tools,k8s:io.cilium.k8s.namespace.labels.team=dev", false},
		{"peer namespaceSelector: not a pod", &in.FromEndpoints[1], "k8s:io.cilium.k8s.namespace.labels.team=ops", false},
		{"peer both: probe in staging", &in.FromEndpoints[2],
			"k8s:role=probe,k8s:io.kubernetes.pod.namespace=s1,k8s:io.cilium.k8s.namespace.labels.env=staging", true},
		{"peer both: probe elsewhere", &in.FromEndpoints[2],
			"k8s:role=probe,k8s:io.kubernetes.pod.namespace=prod,k8s:io.cilium.k8s.namespace.labels.env=prod", false},
		{"peer both: other pod in staging", &in.FromEndpoints[2],
			"k8s:role=web,k8s:io.kubernetes.pod.namespace=s1,k8s:io.cilium.k8s.namespace.labels.env=staging", false},
		{"egress to: {} is any pod of prod", &r.Egress[1].ToEndpoints[0], "k8s:app=db,k8s:io.kubernetes.pod.namespace=prod", true},
		{"egress to: {} is not a pod of dev", &r.Egress[1].ToEndpoints[0], "k8s:app=db,k8s:io.kubernetes.pod.namespace=dev", false},
	}
	for _, s := range selects {
		if got := s.sel.Matches(mustLabels(t, s.labels)); got != s.want {
			t.Errorf("%s: Matches = %v, want %v", s.name, got, s.want)
		}
	}

	check(t, "ipBlock", in.FromCIDRSet, []CIDRRule{{CIDR: "172.16.0.0/12", Except: []string{"172.16.1.0/24"}}})
	check(t, "ports", in.ToPorts, []PortRule{{Ports: []PortProtocol{
		{Port: "80", Protocol: ProtoTCP},
		{Port: "dns", Protocol: ProtoUDP},
		{Port: "8000", EndPort: 8080, Protocol: ProtoTCP},
	}}})
	check(t, "egress without to", r.Egress[0].ToEntities, []Entity{EntityAll})
	check(t, "egress ports", r.Egress[0].ToPorts[0].Ports, []PortProtocol{{Port: "53", Protocol: ProtoUDP}})
}

func TestNetworkPolicyDefaultDeny(t *testing.T) {
	tests := []struct {
		name                    string
		spec                    string
		ingressDeny, egressDeny bool
		ingress, egress         int
	}{
		{"no policyTypes, no rules: ingress only", "{podSelector: {}}", true, false, 0, 0},
		{"Ingress without rules", "{podSelector: {}, policyTypes: [Ingress]}", true, false, 0, 0},
		{"both without rules", "{podSelector: {}, policyTypes: [Ingress, Egress]}", true, true, 0, 0},
		{"Egress only", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}}]}]}", false, true, 0, 1},
		{"allow all ingress", "{podSelector: {}, ingress: [{}]}", true, false, 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := parseOne(t, "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np}\nspec: "+tt.spec+"\n")
			r := p.Rules[0]
			check(t, "IngressDefaultDeny", r.IngressDefaultDeny(), tt.ingressDeny)
			check(t, "EgressDefaultDeny", r.EgressDefaultDeny(), tt.egressDeny)
			check(t, "ingress rules", len(r.Ingress), tt.ingress)
			check(t, "egress rules", len(r.Egress), tt.egress)
			// The pods are selected: every pod of the namespace, none elsewhere.
			check(t, "selects pod of default", r.EndpointSelector.Matches(mustLabels(t, "k8s:io.kubernetes.pod.namespace=default")), true)
			check(t, "selects pod of other", r.EndpointSelector.Matches(mustLabels(t, "k8s:io.kubernetes.pod.namespace=other")), false)
		})
	}
	p := parseOne(t, "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np}\nspec: {podSelector: {}, ingress: [{}]}\n")
	check(t, "empty ingress rule allows all", p.Rules[0].Ingress[0].FromEntities, []Entity{EntityAll})
}

func TestNetworkPolicyRejects(t *testing.T) {
	np := func(spec string) string {
		return "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: prod}\nspec:\n" + spec
	}
	tests := []struct {
		name  string
		input string
		want  string
	}{
		{"ipBlock with podSelector", np("  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]\n"),
			`policy "prod/networkpolicy/np": spec.ingress[0].from[0].ipBlock: cannot be combined with podSelector or namespaceSelector`},
		{"empty peer", np("  podSelector: {}\n  egress: [{to: [{}]}]\n"),
			`spec.egress[0].to[0]: needs podSelector, namespaceSelector or ipBlock`},
		{"except outside cidr", np("  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/8]}}]}]\n"),
			`spec.ingress[0].from[0].ipBlock.except[0]: "11.0.0.0/8" is not inside cidr "10.0.0.0/8"`},
		{"bad policyType", np("  podSelector: {}\n  policyTypes: [Ingress, Both]\n"),
			`spec.policyTypes[1]: "Both" is not one of Ingress, Egress`},
		{"rules of an unlisted type", np("  podSelector: {}\n  policyTypes: [Egress]\n  ingress: [{}]\n"),
			`spec.ingress: rules given but policyTypes does not list Ingress`},
		{"port 0", np("  podSelector: {}\n  ingress: [{ports: [{port: 0}]}]\n"),
			`spec.ingress[0].ports[0].port: 0 is not a port number 1-65535`},
		{"port 70000", np("  podSelector: {}\n  ingress: [{ports: [{port: 70000}]}]\n"),
			`spec.ingress[0].ports[0].port: 70000 is not a port number 1-65535`},
		{"endPort below port", np("  podSelector: {}\n  ingress: [{ports: [{port: 90, endPort: 80}]}]\n"),
			`spec.ingress[0].ports[0].endPort: 80 is less than port 90`},
		{"endPort with named port", np("  podSelector: {}\n  ingress: [{ports: [{port: http, endPort: 80}]}]\n"),
			`spec.ingress[0].ports[0].endPort: 80: only allowed with a numeric port`},
		{"bad protocol", np("  podSelector: {}\n  ingress: [{ports: [{protocol: ICMP}]}]\n"),
			`spec.ingress[0].ports[0].protocol: "ICMP" is not one of TCP, UDP, SCTP`},
		{"port of wrong type", np("  podSelector: {}\n  ingress: [{ports: [{port: [80]}]}]\n"),
			`spec.ingress[0].ports[0].port: want an integer or a string, got a list`},
		{"source prefix in a Kubernetes selector", np("  podSelector: {matchLabels: {\"k8s:app\": web}}\n"),
			`spec.podSelector.matchLabels: invalid label: key "k8s:app"`},
		{"namespace label too long", np("  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {abcdefghijklmnopqrstuvwxyz-abcdefghijklm: x}}}]}]\n"),
			`spec.ingress[0].from[0].namespaceSelector: key "abcdefghijklmnopqrstuvwxyz-abcdefghijklm" is too long`},
		{"unknown field", np("  podselector: {}\n"),
			`spec.podselector: unknown field (did you mean "podSelector"?)`},
		{"missing spec", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np}\n",
			`policy "default/networkpolicy/np": spec: required`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantParseError(t, tt.input, tt.want)
		})
	}
}

// A peer with a podSelector and no namespaceSelector selects pods of the
// policy's own namespace only, even when the podSelector names the
// namespace key (Cilium sets it to the policy's namespace likewise).
// Found 2026-12-05 by reading the parser: such a selector counted as
// scoped by itself, so `matchExpressions: [{key:
// io.kubernetes.pod.namespace, operator: Exists}]` selected every
// namespace's pods, and `matchLabels: {io.kubernetes.pod.namespace:
// kube-system}` kube-system's.
func TestNetworkPolicyPodSelectorStaysInItsNamespace(t *testing.T) {
	for _, peer := range []string{
		"{podSelector: {matchExpressions: [{key: io.kubernetes.pod.namespace, operator: Exists}]}}",
		"{podSelector: {matchLabels: {io.kubernetes.pod.namespace: kube-system}}}",
	} {
		p := parseOne(t, "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: a}\n"+
			"spec: {podSelector: {}, ingress: [{from: ["+peer+"]}], egress: [{to: ["+peer+"]}]}\n")
		for _, sel := range []EndpointSelector{p.Rules[0].Ingress[0].FromEndpoints[0], p.Rules[0].Egress[0].ToEndpoints[0]} {
			check(t, peer+" selects a pod of a", sel.Matches(mustLabels(t, "k8s:io.kubernetes.pod.namespace=a")), true)
			check(t, peer+" selects a pod of kube-system", sel.Matches(mustLabels(t, "k8s:io.kubernetes.pod.namespace=kube-system")), false)
			check(t, peer+" selects a pod of b", sel.Matches(mustLabels(t, "k8s:io.kubernetes.pod.namespace=b")), false)
		}
	}
}
