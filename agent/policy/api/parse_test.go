package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// parseOne parses input and requires exactly one policy.
func parseOne(t *testing.T, input string) Policy {
	t.Helper()
	ps, err := Parse([]byte(input))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if len(ps) != 1 {
		t.Fatalf("Parse returned %d policies, want 1", len(ps))
	}
	return ps[0]
}

func check[T any](t *testing.T, what string, got, want T) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s = %#v, want %#v", what, got, want)
	}
}

var fullCNP = func() string {
	b, err := os.ReadFile("testdata/full-cnp.yaml")
	if err != nil {
		panic(err)
	}
	return string(b)
}()

func TestParseCiliumNetworkPolicy(t *testing.T) {
	p := parseOne(t, fullCNP)
	check(t, "Kind", p.Kind, KindCiliumNetworkPolicy)
	check(t, "Key", p.Key(), "prod/allow-web")
	check(t, "Labels", p.Labels, map[string]string{"team": "web"})
	check(t, "Source", p.Source, fullCNP)
	if len(p.Rules) != 1 {
		t.Fatalf("got %d rules, want 1", len(p.Rules))
	}
	r := p.Rules[0]
	check(t, "Description", r.Description, "web tier")
	check(t, "Labels", r.Labels, []string{"k8s:owner=web"})
	check(t, "endpointSelector", r.EndpointSelector.MatchLabels,
		map[string]string{"app": "web", podNamespaceKey: "prod"})
	if len(r.Ingress) != 3 || len(r.IngressDeny) != 1 || len(r.Egress) != 4 || len(r.EgressDeny) != 1 {
		t.Fatalf("got %d/%d ingress(deny), %d/%d egress(deny) rules, want 3/1, 4/1",
			len(r.Ingress), len(r.IngressDeny), len(r.Egress), len(r.EgressDeny))
	}

	in := r.Ingress
	check(t, "fromEndpoints[0]", in[0].FromEndpoints[0], EndpointSelector{
		MatchLabels:      map[string]string{"k8s:app": "frontend", podNamespaceKey: "prod"},
		MatchExpressions: []SelectorRequirement{{Key: "tier", Operator: OpIn, Values: []string{"a", "b"}}},
	})
	check(t, "fromEndpoints[1] (names its namespace)", in[0].FromEndpoints[1].MatchLabels,
		map[string]string{podNamespaceKey: "monitoring"})
	check(t, "fromRequires", in[0].FromRequires[0].MatchLabels, map[string]string{"env": "prod", podNamespaceKey: "prod"})
	check(t, "ports", in[0].ToPorts[0].Ports, []PortProtocol{
		{Port: "80", Protocol: ProtoTCP}, {Port: "8080", Protocol: ProtoTCP}})
	check(t, "http", in[0].ToPorts[0].Rules.HTTP, []PortRuleHTTP{
		{Method: "GET", Path: "/api/v[0-9]+/.*", Headers: []string{"X-Token: abc"},
			HeaderMatches: []HeaderMatch{{Name: "X-Env", Value: "prod", Mismatch: "ADD"}}}})
	check(t, "fromCIDR", in[1].FromCIDR, []string{"192.0.2.0/24", "198.51.100.7"})
	check(t, "fromCIDRSet", in[1].FromCIDRSet, []CIDRRule{{CIDR: "10.0.0.0/8", Except: []string{"10.96.0.0/12"}}})
	check(t, "serverNames", in[1].ToPorts[0].ServerNames, []string{"*.example.com"})
	check(t, "fromEntities", in[2].FromEntities, []Entity{EntityWorld, EntityKubeAPIServer})
	check(t, "fromGroups", *in[2].FromGroups[0].AWS, AWSGroup{SecurityGroupsIDs: []string{"sg-123"}, Region: "us-east-1"})
	fields := in[2].ICMPs[0].Fields
	check(t, "icmp family defaulted", fields[0].Family, ICMPFamilyIPv4)
	for i, want := range []uint8{8, 128} {
		if got, err := fields[i].TypeNumber(); err != nil || got != want {
			t.Errorf("icmp field %d: TypeNumber() = %d, %v; want %d", i, got, err, want)
		}
	}
	check(t, "ingressDeny", r.IngressDeny[0].FromCIDR, []string{"203.0.113.0/24"})

	eg := r.Egress
	check(t, "toEndpoints", eg[0].ToEndpoints[0].MatchLabels, map[string]string{"app": "db", podNamespaceKey: "prod"})
	check(t, "port 5432 (number, no protocol)", eg[0].ToPorts[0].Ports, []PortProtocol{{Port: "5432", Protocol: ProtoAny}})
	check(t, "k8sService", *eg[1].ToServices[0].K8sService, K8sServiceNamespace{ServiceName: "kube-dns", Namespace: "kube-system"})
	check(t, "k8sServiceSelector namespace defaulted", eg[1].ToServices[1].K8sServiceSelector.Namespace, "prod")
	check(t, "dns", eg[1].ToPorts[0].Rules.DNS, []PortRuleDNS{{MatchPattern: "*.example.com"}})
	check(t, "toFQDNs", eg[2].ToFQDNs, []FQDNSelector{{MatchName: "api.example.com"}, {MatchPattern: "*.cdn.example.com"}})
	check(t, "toCIDRSet", eg[3].ToCIDRSet, []CIDRRule{{CIDR: "2001:db8::/32", Except: []string{"2001:db8:1::/48"}}})
	check(t, "toEntities", eg[3].ToEntities, []Entity{EntityCluster})
	check(t, "toGroups", eg[3].ToGroups[0].AWS.SecurityGroupsNames, []string{"web"})
	check(t, "toRequires (reserved: not restricted)", eg[3].ToRequires[0].MatchLabels, map[string]string{"reserved:host": ""})
	check(t, "kafka", eg[3].ToPorts[0].Rules.Kafka, []PortRuleKafka{{Role: "produce", Topic: "events"}})
	check(t, "egressDeny", r.EgressDeny[0].ToPorts[0].Ports, []PortProtocol{{Port: "0", Protocol: ProtoUDP}})

	if !r.IngressDefaultDeny() || !r.EgressDefaultDeny() {
		t.Errorf("default deny = %v/%v, want true/true", r.IngressDefaultDeny(), r.EgressDefaultDeny())
	}
}

func TestParseClusterwide(t *testing.T) {
	ps, err := Parse([]byte(`apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: host-fw}
spec:
  nodeSelector: {matchLabels: {"node-role.kubernetes.io/worker": ""}}
  ingress:
  - fromEntities: [cluster]
    toPorts: [{ports: [{port: "10250", protocol: TCP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: all-to-dns}
spec:
  endpointSelector: {}
  egress:
  - toEndpoints: [{matchLabels: {"k8s:k8s-app": kube-dns}}]
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 {
		t.Fatalf("got %d policies, want 2", len(ps))
	}
	fw, dns := ps[0], ps[1]
	check(t, "Key", fw.Key(), "host-fw")
	check(t, "Namespace", fw.Namespace, "")
	check(t, "Clusterwide", fw.Clusterwide(), true)
	check(t, "nodeSelector", fw.Rules[0].NodeSelector.MatchLabels, map[string]string{"node-role.kubernetes.io/worker": ""})
	check(t, "endpointSelector", fw.Rules[0].EndpointSelector, (*EndpointSelector)(nil))
	// Clusterwide selectors are not restricted to a namespace.
	check(t, "empty endpointSelector", *dns.Rules[0].EndpointSelector, EndpointSelector{})
	check(t, "toEndpoints", dns.Rules[0].Egress[0].ToEndpoints[0].MatchLabels, map[string]string{"k8s:k8s-app": "kube-dns"})
}

func TestParseSpecs(t *testing.T) {
	p := parseOne(t, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: two-rules, namespace: shop}
specs:
- endpointSelector: {matchLabels: {app: cart}}
  ingress: [{fromEndpoints: [{matchLabels: {app: web}}]}]
- endpointSelector: {matchLabels: {app: pay}}
  egress: [{toEntities: [world], toPorts: [{ports: [{port: "443", protocol: TCP}]}]}]
`)
	check(t, "Key", p.Key(), "shop/two-rules")
	if len(p.Rules) != 2 {
		t.Fatalf("got %d rules, want 2", len(p.Rules))
	}
	check(t, "rule 0 selector", p.Rules[0].EndpointSelector.MatchLabels, map[string]string{"app": "cart", podNamespaceKey: "shop"})
	check(t, "rule 1 selector", p.Rules[1].EndpointSelector.MatchLabels, map[string]string{"app": "pay", podNamespaceKey: "shop"})
	check(t, "rule 1 egress", p.Rules[1].Egress[0].ToEntities, []Entity{EntityWorld})
	check(t, "rule 0 egress default deny", p.Rules[0].EgressDefaultDeny(), false)
}

func TestParseMultiDocument(t *testing.T) {
	docA := "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a}\nspec: {endpointSelector: {}}\n"
	docB := "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b, namespace: ns1}\nspec: {podSelector: {}}\n"
	docC := "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c}\nspec: {endpointSelector: {}}\r\n"
	input := "---\n" + docA + "---\n# only a comment\n---\n" + docB + "--- # next\n" + docC + "\n---\n"
	ps, err := Parse([]byte(input))
	if err != nil {
		t.Fatal(err)
	}
	var keys, sources []string
	for _, p := range ps {
		keys = append(keys, p.Key())
		sources = append(sources, p.Source)
	}
	check(t, "keys", keys, []string{"default/a", "ns1/networkpolicy/b", "c"})
	check(t, "sources", sources, []string{docA, docB, docC + "\n"})

	t.Run("error names the line of a nameless document", func(t *testing.T) {
		_, err := Parse([]byte(docA + "---\n\n# comment\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nspec: {endpointSelector: {}}\n"))
		if err == nil || !strings.Contains(err.Error(), "document at line 8: metadata.name: required") {
			t.Fatalf("err = %v, want it to name document at line 8", err)
		}
	})
	t.Run("YAML errors count lines from the input's start", func(t *testing.T) {
		_, err := Parse([]byte(docA + "---\napiVersion: cilium.io/v2\nkind: [\n"))
		if err == nil || !strings.Contains(err.Error(), "document at line 6: yaml: line 7:") {
			t.Fatalf("err = %v, want the YAML error at line 7 of the input", err)
		}
	})
	t.Run("empty input", func(t *testing.T) {
		ps, err := Parse([]byte("\n---\n# nothing\n"))
		if err != nil || len(ps) != 0 {
			t.Fatalf("Parse = %v, %v; want no policies and no error", ps, err)
		}
	})
}

func TestParseJSON(t *testing.T) {
	p := parseOne(t, `{
  "apiVersion": "cilium.io/v2",
  "kind": "CiliumNetworkPolicy",
  "metadata": {"name": "json-policy", "namespace": "web"},
  "spec": {
    "endpointSelector": {"matchLabels": {"app": "web"}},
    "ingress": [{"fromCIDRSet": [{"cidr": "10.0.0.0/8"}], "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]}]
  }
}`)
	check(t, "Key", p.Key(), "web/json-policy")
	check(t, "ports", p.Rules[0].Ingress[0].ToPorts[0].Ports, []PortProtocol{{Port: "8080", Protocol: ProtoTCP}})

	t.Run("array", func(t *testing.T) {
		ps, err := Parse([]byte(`[
  {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "one"}, "spec": {"endpointSelector": {}}},
  {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "two"}, "spec": {"podSelector": {}}}
]`))
		if err != nil {
			t.Fatal(err)
		}
		check(t, "kinds", []string{ps[0].Kind, ps[1].Kind}, []string{KindCiliumNetworkPolicy, KindNetworkPolicy})
	})
	t.Run("unknown field in an array item", func(t *testing.T) {
		_, err := Parse([]byte(`[{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "one"}, "spec": {"endpointSelector": {}, "egres": []}}]`))
		if err == nil || !strings.Contains(err.Error(), `policy "default/one": spec.egres: unknown field`) {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestParseList(t *testing.T) {
	input := `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicyList
metadata: {resourceVersion: ""}
items:
- metadata: {name: first, namespace: a}
  spec:
    endpointSelector: {matchLabels: {app: x}}
    ingress: [{toPorts: [{ports: [{port: 80, protocol: TCP}]}]}]
- apiVersion: cilium.io/v2
  kind: CiliumNetworkPolicy
  metadata: {name: second, namespace: a}
  spec: {endpointSelector: {}}
`
	ps, err := Parse([]byte(input))
	if err != nil {
		t.Fatal(err)
	}
	check(t, "keys", []string{ps[0].Key(), ps[1].Key()}, []string{"a/first", "a/second"})
	// An item's source is the item re-marshalled, and parses to the same policy.
	again := parseOne(t, ps[0].Source)
	check(t, "rules parsed from the item's source", again.Rules, ps[0].Rules)

	t.Run("generic List", func(t *testing.T) {
		ps, err := Parse([]byte(`apiVersion: v1
kind: List
items:
- {apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: np}, spec: {podSelector: {}}}
- {apiVersion: cilium.io/v2, kind: CiliumClusterwideNetworkPolicy, metadata: {name: ccnp}, spec: {endpointSelector: {}}}
`))
		if err != nil {
			t.Fatal(err)
		}
		check(t, "keys", []string{ps[0].Key(), ps[1].Key()}, []string{"default/networkpolicy/np", "ccnp"})
	})
	t.Run("wrong kind in a typed list", func(t *testing.T) {
		_, err := Parse([]byte(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicyList
items:
- {apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: np}, spec: {podSelector: {}}}
`))
		if err == nil || !strings.Contains(err.Error(), "document at line 1, items[0]: kind:") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestDecodeIsExactCase(t *testing.T) {
	// encoding/json would accept "EndpointSelector"; Parse does not.
	_, err := Parse([]byte("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\nspec: {EndpointSelector: {}}\n"))
	if err == nil || !strings.Contains(err.Error(), `spec.EndpointSelector: unknown field (did you mean "endpointSelector"?)`) {
		t.Fatalf("err = %v", err)
	}
}

// A document's YAML errors name the same lines as when the document was
// parsed padded with every line before it (the former, quadratic way),
// for documents at the start, on line 2 and deep in the input.
func TestParseErrorLinesCountFromInputStart(t *testing.T) {
	broken := []string{
		"apiVersion: cilium.io/v2\nkind: [\n",         // syntax error, last line
		"kind: [\n",                                   // syntax error, first line
		"apiVersion: v1\n  kind: x\n",                 // mapping not allowed
		"a: 1\nb: 2\na: 3\nb: {x: 1, x: 2}\n",         // several unmarshal errors
		"metadata:\n  name: \"open\nspec: {}\n",       // unterminated string
		"\n# comment\n\tkind: x\n",                    // tab
		"metadata: {name: a}\nspec: {\nx: 1\nx: 2}\n", // flow mapping
	}
	for _, text := range broken {
		for _, start := range []int{1, 2, 3, 40, 12345} {
			padded := strings.Repeat("\n", start-1) + text
			_, want := yaml.YAMLToJSONStrict([]byte(padded))
			_, got := yamlToJSON([]byte(text), start)
			if want == nil || got == nil || got.Error() != want.Error() {
				t.Errorf("document at line %d %q:\n got  %v\n want %v", start, text, got, want)
			}
		}
	}

	// Through Parse: the document at line 40 has its error on line 41.
	input := strings.Repeat("# filler\n", 38) + "---\napiVersion: cilium.io/v2\nkind: [\n"
	_, err := Parse([]byte(input))
	if err == nil || !strings.Contains(err.Error(), "document at line 40: yaml: line 41:") {
		t.Fatalf("err = %v, want the document at line 40 and the YAML error at line 41", err)
	}
}

// Documents are parsed concurrently; the policies and the errors still come
// in input order, the same as parsing one document after the other.
func TestParseOrderIsTheInputs(t *testing.T) {
	input := func(broken bool) []byte {
		var b strings.Builder
		for i := range 300 {
			switch {
			case broken && i%7 == 3:
				fmt.Fprintf(&b, "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: bad-%d}\nspec: {endpointSelector: {}, ingres: []}\n", i)
			case broken && i%7 == 5:
				b.WriteString("---\nkind: [\n")
			default:
				fmt.Fprintf(&b, "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p-%d}\nspec: {endpointSelector: {}}\n", i)
			}
		}
		return []byte(b.String())
	}
	var wantErrs []error
	for _, d := range splitDocuments(input(true)) {
		if _, err := d.parse(); err != nil {
			wantErrs = append(wantErrs, err)
		}
	}
	if _, err := Parse(input(true)); err == nil || err.Error() != errors.Join(wantErrs...).Error() {
		t.Fatalf("errors differ from a sequential parse:\n got  %.500v\n want %.500v", err, errors.Join(wantErrs...))
	}
	ps, err := Parse(input(false))
	if err != nil || len(ps) != 300 {
		t.Fatalf("Parse: %d policies, %v", len(ps), err)
	}
	for i, p := range ps {
		if want := fmt.Sprintf("default/p-%d", i); p.Key() != want {
			t.Fatalf("policy %d is %s, want %s", i, p.Key(), want)
		}
	}
}

// decodeTyped (the generic decoding, which checkShape checked, made typed)
// gives what decoding the YAML text again with yaml.UnmarshalStrict gave,
// including numbers and booleans where strings are wanted.
func TestDecodeTypedMatchesYAMLDecoding(t *testing.T) {
	docs := []string{
		fullCNP,
		`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: odd, labels: {a: 1, b: true, c: 1.5, d: 0x1F, e: 3.14159265358979, f: -7, g: 18446744073709551615, h: null}}
spec:
  endpointSelector: {matchLabels: {app: 80, on: yes, v: 1.10}}
  ingress:
  - fromEndpoints: [{matchExpressions: [{key: tier, operator: In, values: [1, true, 2.5, web]}]}]
    toPorts:
    - ports: [{port: 80, protocol: TCP, endPort: 90}, {port: "443"}, {port: 8.0}]
    icmps: [{fields: [{type: 8}, {type: EchoRequest, family: IPv4}]}]
`,
		`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: ns1, annotations: {n: 42}}
spec:
  podSelector: {matchLabels: {app: 1}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{podSelector: {matchLabels: {x: true}}}, {ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]
    ports: [{port: 80}, {port: http, protocol: UDP}, {port: 1000, endPort: 2000}]
  egress: [{}]
`,
	}
	for _, name := range []string{"allow-web-to-db.yaml", "allow-web-from-c1.yaml"} {
		b, err := os.ReadFile("../../../docs/examples/" + name)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range splitDocuments(b) {
			docs = append(docs, string(d.text))
		}
	}
	for _, d := range splitDocuments(benchDocuments(20)) {
		docs = append(docs, string(d.text))
	}
	for _, text := range docs {
		if strings.TrimSpace(text) == "" {
			continue
		}
		j, err := yaml.YAMLToJSONStrict([]byte(text))
		if err != nil {
			t.Fatal(err)
		}
		dec := json.NewDecoder(bytes.NewReader(j))
		dec.UseNumber()
		var obj map[string]any
		if err := dec.Decode(&obj); err != nil {
			t.Fatal(err)
		}
		var want, got any = &ciliumDocument{}, &ciliumDocument{}
		if obj["kind"] == KindNetworkPolicy {
			want, got = &k8sDocument{}, &k8sDocument{}
		}
		if err := yaml.UnmarshalStrict([]byte(text), want); err != nil {
			t.Fatalf("UnmarshalStrict: %v\n%s", err, text)
		}
		if err := decodeTyped(obj, got); err != nil {
			t.Fatalf("decodeTyped: %v\n%s", err, text)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("decodeTyped differs from yaml.UnmarshalStrict:\n got  %+v\n want %+v\n%s", got, want, text)
		}
	}
}
