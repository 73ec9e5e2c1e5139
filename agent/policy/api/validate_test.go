package api

import (
	"errors"
	"strings"
	"testing"

	"github.com/filament-net/filament/agent/labels"
)

// cnp is a CiliumNetworkPolicy named bad in namespace default with the
// given spec lines (indented by two spaces under spec:).
func cnp(spec string) string {
	return "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: bad\nspec:\n" + spec
}

// wantParseError parses input and requires an ErrInvalidPolicy error
// mentioning every string of want, and no policies.
func wantParseError(t *testing.T, input string, want ...string) error {
	t.Helper()
	ps, err := Parse([]byte(input))
	if err == nil {
		t.Fatalf("Parse succeeded with %d policies, want an error", len(ps))
	}
	if ps != nil {
		t.Errorf("Parse returned %d policies along with the error", len(ps))
	}
	if !errors.Is(err, ErrInvalidPolicy) {
		t.Errorf("error does not wrap ErrInvalidPolicy: %v", err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q\ndoes not mention %q", err, w)
		}
	}
	return err
}

func TestParseRejects(t *testing.T) {
	const sel = "  endpointSelector: {}\n"
	tests := []struct {
		name  string
		input string
		want  []string
	}{
		{"unknown field", cnp(sel + "  ingres: []\n"),
			[]string{`policy "default/bad": spec.ingres: unknown field (did you mean "ingress"?)`}},
		{"unknown nested field", cnp(sel + "  ingress: [{toPorts: [{ports: [{port: \"80\", proto: TCP}]}]}]\n"),
			[]string{`spec.ingress[0].toPorts[0].ports[0].proto: unknown field`}},
		{"wrong type", cnp(sel + "  ingress: [{toPorts: [{ports: [{port: \"80\", endPort: high}]}]}]\n"),
			[]string{`spec.ingress[0].toPorts[0].ports[0].endPort: want an integer, got string "high"`}},
		{"bad label key", cnp("  endpointSelector: {matchLabels: {\"bad key!\": web}}\n"),
			[]string{`spec.endpointSelector.matchLabels`, `"bad key!"`}},
		{"bad label value", cnp("  endpointSelector: {matchLabels: {app: \"-web\"}}\n"),
			[]string{`spec.endpointSelector.matchLabels["app"]`, `"-web"`}},
		{"bad CIDR", cnp(sel + "  ingress: [{fromCIDR: [10.0.0.0/33]}]\n"),
			[]string{`spec.ingress[0].fromCIDR[0]: "10.0.0.0/33" is not a CIDR or IP address`}},
		{"except outside cidr", cnp(sel + "  egress: [{toCIDRSet: [{cidr: 10.0.0.0/8, except: [192.168.0.0/16]}]}]\n"),
			[]string{`spec.egress[0].toCIDRSet[0].except[0]: "192.168.0.0/16" is not inside cidr "10.0.0.0/8"`}},
		{"except wider than cidr", cnp(sel + "  egress: [{toCIDRSet: [{cidr: 10.1.0.0/16, except: [10.0.0.0/8]}]}]\n"),
			[]string{`spec.egress[0].toCIDRSet[0].except[0]: "10.0.0.0/8" is not inside cidr "10.1.0.0/16"`}},
		{"port 70000", cnp(sel + "  ingress: [{toPorts: [{ports: [{port: \"70000\", protocol: TCP}]}]}]\n"),
			[]string{`policy "default/bad": spec.ingress[0].toPorts[0].ports[0].port: "70000" is not a port number 1-65535`}},
		{"endPort below port", cnp(sel + "  ingress: [{toPorts: [{ports: [{port: \"80\", endPort: 79, protocol: TCP}]}]}]\n"),
			[]string{`spec.ingress[0].toPorts[0].ports[0].endPort: 79 is less than port 80`}},
		{"endPort with named port", cnp(sel + "  ingress: [{toPorts: [{ports: [{port: http, endPort: 90, protocol: TCP}]}]}]\n"),
			[]string{`spec.ingress[0].toPorts[0].ports[0].endPort: 90: only allowed with a numeric port`}},
		{"bad named port", cnp(sel + "  ingress: [{toPorts: [{ports: [{port: HTTP_1, protocol: TCP}]}]}]\n"),
			[]string{`spec.ingress[0].toPorts[0].ports[0].port: "HTTP_1" is not a port number 1-65535 or a port name`}},
		{"port 0 without protocol", cnp(sel + "  ingress: [{toPorts: [{ports: [{port: \"0\"}]}]}]\n"),
			[]string{`spec.ingress[0].toPorts[0].ports[0].port: "0" (all ports) needs a protocol other than ANY`}},
		{"bad protocol", cnp(sel + "  ingress: [{toPorts: [{ports: [{port: \"80\", protocol: TCPX}]}]}]\n"),
			[]string{`spec.ingress[0].toPorts[0].ports[0].protocol: "TCPX" is not one of TCP, UDP, SCTP, ICMP, ICMPv6, ANY`}},
		// The proxy refused the node's whole L7 configuration for these
		// (every namespace's rules on the node stayed as they were).
		{"header value with a control character", cnp(sel + "  ingress: [{toPorts: [{ports: [{port: \"80\", protocol: TCP}], rules: {http: [{headerMatches: [{name: X-A, value: \"a\\u0001b\"}]}]}}]}]\n"),
			[]string{`spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].value: "a\x01b" is not an HTTP header value`}},
		{"regex too deep once anchored", cnp(sel + "  ingress: [{toPorts: [{ports: [{port: \"80\", protocol: TCP}], rules: {http: [{path: \"" + strings.Repeat("(", 999) + "a" + strings.Repeat(")", 999) + "\"}]}}]}]\n"),
			[]string{`spec.ingress[0].toPorts[0].rules.http[0].path`, `is not a valid regular expression`}},
		{"bad entity", cnp(sel + "  egress: [{toEntities: [wrld]}]\n"),
			[]string{`spec.egress[0].toEntities[0]: "wrld" is not one of world, cluster`}},
		{"missing name", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {namespace: x}\nspec: {endpointSelector: {}}\n",
			[]string{`document at line 1: metadata.name: required`}},
		{"bad name", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: Web_Policy}\nspec: {endpointSelector: {}}\n",
			[]string{`metadata.name: "Web_Policy" is not a DNS-1123 name`}},
		{"bad namespace", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a, namespace: No.Dots}\nspec: {endpointSelector: {}}\n",
			[]string{`metadata.namespace: "No.Dots" is not a DNS-1123 label`}},
		{"clusterwide with namespace", "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {endpointSelector: {}}\n",
			[]string{`metadata.namespace: "x": a CiliumClusterwideNetworkPolicy has no namespace`}},
		{"both spec and specs", cnp(sel + "specs: [{endpointSelector: {}}]\n"),
			[]string{`policy "default/bad": specs: cannot be combined with spec`}},
		{"neither spec nor specs", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: bad}\n",
			[]string{`policy "default/bad": spec: required`}},
		{"deny with L7 rules", cnp(sel + "  ingressDeny: [{toPorts: [{ports: [{port: \"80\", protocol: TCP}], rules: {http: [{method: GET}]}}]}]\n"),
			[]string{`spec.ingressDeny[0].toPorts[0].rules: L7 rules are not allowed in a deny rule`}},
		{"deny with toFQDNs", cnp(sel + "  egressDeny: [{toFQDNs: [{matchName: example.com}]}]\n"),
			[]string{`spec.egressDeny[0].toFQDNs: not allowed in a deny rule`}},
		// What selects nothing yet would deny nothing (fail open): refused in
		// deny rules (until 2026-12-05 imported with a warning).
		{"deny with a named port", cnp(sel + "  egressDeny: [{toPorts: [{ports: [{port: http}]}]}]\n"),
			[]string{`spec.egressDeny[0].toPorts[0].ports[0].port: named port "http" in a deny rule: named ports are not resolved yet, so it would deny nothing`}},
		{"deny with toServices", cnp(sel + "  egressDeny: [{toServices: [{k8sService: {serviceName: s, namespace: default}}]}]\n"),
			[]string{`spec.egressDeny[0].toServices: not allowed in a deny rule (services are not resolved yet, so it would deny nothing)`}},
		{"deny with kube-apiserver", cnp(sel + "  ingressDeny: [{fromEntities: [kube-apiserver]}]\n"),
			[]string{`spec.ingressDeny[0].fromEntities[0]: kube-apiserver in a deny rule: the entity selects nothing yet, so it would deny nothing`}},
		{"rule selects nothing", cnp("  ingress: [{fromEntities: [world]}]\n"),
			[]string{`spec.endpointSelector: required`}},
		{"both selectors", cnp(sel + "  nodeSelector: {}\n"),
			[]string{`spec.nodeSelector: cannot be combined with endpointSelector`}},
		{"nodeSelector in namespaced policy", cnp("  nodeSelector: {}\n"),
			[]string{`spec.nodeSelector: only allowed in a CiliumClusterwideNetworkPolicy`}},
		{"selector in another namespace", cnp("  endpointSelector: {matchLabels: {\"k8s:io.kubernetes.pod.namespace\": other}}\n"),
			[]string{`spec.endpointSelector.matchLabels["k8s:io.kubernetes.pod.namespace"]: "other"`}},
		{"In without values", cnp("  endpointSelector: {matchExpressions: [{key: app, operator: In}]}\n"),
			[]string{`spec.endpointSelector.matchExpressions[0].values: operator In needs at least one value`}},
		{"Exists with values", cnp("  endpointSelector: {matchExpressions: [{key: app, operator: Exists, values: [x]}]}\n"),
			[]string{`spec.endpointSelector.matchExpressions[0].values: ["x"]: operator Exists takes no values`}},
		{"bad operator", cnp("  endpointSelector: {matchExpressions: [{key: app, operator: Has}]}\n"),
			[]string{`spec.endpointSelector.matchExpressions[0].operator: "Has" is not one of In, NotIn, Exists, DoesNotExist`}},
		{"bad key source", cnp("  endpointSelector: {matchLabels: {\"bogus:app\": x}}\n"),
			[]string{`spec.endpointSelector.matchLabels`, `"bogus:app"`}},
		{"bad http path", cnp(sel + "  ingress: [{toPorts: [{ports: [{port: \"80\", protocol: TCP}], rules: {http: [{path: \"/a(\"}]}}]}]\n"),
			[]string{`spec.ingress[0].toPorts[0].rules.http[0].path: "/a(" is not a valid regular expression`}},
		{"http path RE2 cannot express", cnp(sel + "  ingress: [{toPorts: [{ports: [{port: \"80\", protocol: TCP}], rules: {http: [{path: \"/(?!admin)\"}]}}]}]\n"),
			[]string{`spec.ingress[0].toPorts[0].rules.http[0].path: "/(?!admin)" is not a valid regular expression`}},
		{"http header match action", cnp(sel + "  ingress: [{toPorts: [{ports: [{port: \"80\", protocol: TCP}], rules: {http: [{headerMatches: [{name: X-A, value: b, mismatch: DROP}, {name: \"bad name\"}]}]}}]}]\n"),
			[]string{`spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].mismatch: "DROP" is not one of LOG, ADD, DELETE, REPLACE`,
				`spec.ingress[0].toPorts[0].rules.http[0].headerMatches[1].name: "bad name" is not an HTTP header name`}},
		{"http header match deleting Host", cnp(sel + "  ingress: [{toPorts: [{ports: [{port: \"80\", protocol: TCP}], rules: {http: [{headerMatches: [{name: host, value: a.svc, mismatch: DELETE}]}]}}]}]\n"),
			[]string{`spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].mismatch: DELETE of Host: a request keeps its host`}},
		{"http header match emptying Host", cnp(sel + "  ingress: [{toPorts: [{ports: [{port: \"80\", protocol: TCP}], rules: {http: [{headerMatches: [{name: Host, mismatch: REPLACE}]}]}}]}]\n"),
			[]string{`spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].value: REPLACE of Host needs a host, not ""`}},
		{"http on a port range", cnp(sel + "  ingress: [{toPorts: [{ports: [{port: \"80\", endPort: 90, protocol: TCP}, {port: \"0\", protocol: TCP}], rules: {http: [{method: GET}]}}]}]\n"),
			[]string{`spec.ingress[0].toPorts[0].ports[0].port: "80": HTTP rules need one numeric port`,
				`spec.ingress[0].toPorts[0].ports[1].port: "0": HTTP rules need one numeric port`}},
		{"http over UDP", cnp(sel + "  ingress: [{toPorts: [{ports: [{port: \"80\", protocol: UDP}], rules: {http: [{method: GET}]}}]}]\n"),
			[]string{`spec.ingress[0].toPorts[0].ports[0].protocol: "UDP" cannot carry http rules`}},
		{"two L7 protocols", cnp(sel + "  egress: [{toPorts: [{ports: [{port: \"53\", protocol: TCP}], rules: {http: [{}], dns: [{matchName: a.b}]}}]}]\n"),
			[]string{`spec.egress[0].toPorts[0].rules: http and dns cannot be combined`}},
		{"bad ICMP type", cnp(sel + "  ingress: [{icmps: [{fields: [{type: 300}]}]}]\n"),
			[]string{`spec.ingress[0].icmps[0].fields[0].type: 300 is not an ICMP type 0-255`}},
		{"bad ICMP name", cnp(sel + "  ingress: [{icmps: [{fields: [{family: IPv6, type: Ping}]}]}]\n"),
			[]string{`spec.ingress[0].icmps[0].fields[0].type: "Ping" is not an ICMP type`}},
		{"icmps with toPorts", cnp(sel + "  ingress: [{icmps: [{fields: [{type: 8}]}], toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]}]\n"),
			[]string{`spec.ingress[0].icmps: cannot be combined with toPorts`}},
		{"bad fqdn", cnp(sel + "  egress: [{toFQDNs: [{matchName: \"a b.com\"}]}]\n"),
			[]string{`spec.egress[0].toFQDNs[0].matchName: "a b.com" is not a DNS name`}},
		{"fqdn over 253 characters", cnp(sel + "  egress: [{toFQDNs: [{matchName: \"" + strings.Repeat("a.", 127) + "ab\"}]}]\n"),
			[]string{`spec.egress[0].toFQDNs[0].matchName:`, `is not a DNS name (at most 253 characters)`}},
		{"bad service", cnp(sel + "  egress: [{toServices: [{k8sService: {serviceName: Kube_DNS}}]}]\n"),
			[]string{`spec.egress[0].toServices[0].k8sService.serviceName: "Kube_DNS" is not a service name`}},
		{"bad rule label", cnp(sel + "  labels: [\"k8s:bad key\"]\n"),
			[]string{`spec.labels[0]`, `"bad key"`}},
		{"unknown kind", "apiVersion: cilium.io/v2\nkind: CiliumPolicy\nmetadata: {name: a}\n",
			[]string{`document at line 1: kind: "CiliumPolicy" is not one of CiliumNetworkPolicy`}},
		{"unknown apiVersion", "apiVersion: cilium.io/v1\nkind: CiliumNetworkPolicy\nmetadata: {name: a}\n",
			[]string{`apiVersion: "cilium.io/v1" is not one of cilium.io/v2, networking.k8s.io/v1`}},
		{"missing kind", "apiVersion: cilium.io/v2\nmetadata: {name: a}\n",
			[]string{`document at line 1: kind: required`}},
		{"not an object", "just a string\n",
			[]string{`document at line 1: want a policy document (an object), got string "just a string"`}},
		{"YAML syntax", "apiVersion: cilium.io/v2\nkind: [\n",
			[]string{`document at line 1: `, `yaml`}},
		{"duplicate YAML key", cnp(sel + sel),
			[]string{`document at line 1: `, `endpointSelector`}},
		{"same key twice", cnp(sel) + "---\n" + cnp(sel),
			[]string{`policy "default/bad": metadata.name: defined more than once in the input`}},
		{"nested list", "apiVersion: v1\nkind: List\nitems: [{apiVersion: v1, kind: List, items: []}]\n",
			[]string{`document at line 1, items[0]: kind: "List" cannot be nested in a list`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantParseError(t, tt.input, tt.want...)
		})
	}
}

func TestParseReportsEveryProblem(t *testing.T) {
	err := wantParseError(t, cnp("  endpointSelector: {}\n  ingress: [{fromCIDR: [bad], fromEntities: [nope]}]\n")+
		"---\n"+"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: good}\nspec: {endpointSelector: {}}\n"+
		"---\n"+"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np}\nspec: {podSelector: {}, policyTypes: [Sideways]}\n",
		`spec.ingress[0].fromCIDR[0]: "bad"`,
		`spec.ingress[0].fromEntities[0]: "nope"`,
		`policy "default/networkpolicy/np": spec.policyTypes[0]: "Sideways"`)
	var ve *ValidationError
	if !errors.As(err, &ve) || ve.Document != `policy "default/bad"` || ve.Field != "spec.ingress[0].fromCIDR[0]" {
		t.Errorf("errors.As = %+v, want the first problem as a *ValidationError", ve)
	}
}

func TestValidationErrorUnwrapsCause(t *testing.T) {
	err := wantParseError(t, cnp("  endpointSelector: {matchLabels: {\"bad key\": x}}\n"), "bad key")
	if !errors.Is(err, labels.ErrInvalid) {
		t.Errorf("error does not wrap labels.ErrInvalid: %v", err)
	}
}

func TestPolicyValidate(t *testing.T) {
	good := parseOne(t, cnp("  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]}]\n"))
	if err := good.Validate(); err != nil {
		t.Fatalf("Validate of a parsed policy: %v", err)
	}
	bad := good.DeepCopy()
	bad.Rules[0].Ingress[0].ToPorts[0].Ports[0].Port = "70000"
	bad.Kind = "Firewall"
	err := bad.Validate()
	for _, want := range []string{
		`policy "default/bad": rules[0].ingress[0].toPorts[0].ports[0].port: "70000" is not a port number 1-65535`,
		`policy "default/bad": kind: "Firewall" is not one of`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate = %v, want it to mention %q", err, want)
		}
	}
	if good.Rules[0].Ingress[0].ToPorts[0].Ports[0].Port != "80" {
		t.Error("DeepCopy shares ports with the original")
	}
}

// A policy stored before 2026-12-05 with a deny rule that selects nothing
// yet (accepted then, with a warning) still validates when it is read
// back, so the agent holding it starts; only an import refuses one.
func TestStoredDenyRuleSelectingNothingStillLoads(t *testing.T) {
	p := Policy{Kind: KindCiliumNetworkPolicy, Namespace: "default", Name: "old", Rules: []Rule{{
		EndpointSelector: &EndpointSelector{},
		EgressDeny:       []EgressRule{{ToPorts: []PortRule{{Ports: []PortProtocol{{Port: "http", Protocol: ProtoTCP}}}}}},
		IngressDeny:      []IngressRule{{FromEntities: []Entity{EntityKubeAPIServer}}},
	}}}
	if _, err := Prepare([]Policy{p}); err != nil {
		t.Fatalf("a stored policy of before: %v", err)
	}
}
