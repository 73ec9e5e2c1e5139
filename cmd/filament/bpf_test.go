package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/filament-net/filament/agent/api"
	"github.com/filament-net/filament/agent/api/types"
	"github.com/filament-net/filament/agent/endpoint"
	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/policy"
)

// oneEndpoint knows endpoint 5 only (the other methods are not used).
type oneEndpoint struct{ api.Endpoints }

func (oneEndpoint) Get(id uint16) (endpoint.Endpoint, error) {
	if id != 5 {
		return endpoint.Endpoint{}, endpoint.ErrNotFound
	}
	return endpoint.Endpoint{ID: 5, IPv4: netip.MustParseAddr("10.0.0.5"), State: endpoint.StateReady}, nil
}

type fakeMaps struct{}

func (fakeMaps) Enforcement(netip.Addr) (bool, bool, error) { return true, false, nil }
func (fakeMaps) PolicyEntries() (map[policy.MapKey]bool, error) {
	return map[policy.MapKey]bool{
		{Endpoint: 5, Dir: policy.Ingress, Identity: 300, L4: policy.L4{Proto: 6, Port: 8080, PrefixLen: 21}}: false,
		{Endpoint: 5, Dir: policy.Egress, Identity: 0, L4: policy.L4{Proto: 17, Port: 53, PrefixLen: 24}}:     false,
		{Endpoint: 5, Dir: policy.Ingress, Identity: 301}:                                                     true,
	}, nil
}
func (fakeMaps) IPCache() (map[netip.Prefix]identity.NumericIdentity, error) {
	return map[netip.Prefix]identity.NumericIdentity{netip.MustParsePrefix("10.0.1.0/24"): 300}, nil
}

func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	s := &api.Server{Endpoints: oneEndpoint{}, BPF: fakeMaps{}, IdentityLabels: func(n identity.NumericIdentity) []string {
		return []string{"app=n" + n.String()}
	}}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	if err := s.Serve(sock); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	var out bytes.Buffer
	root := newRoot(&out)
	root.SetArgs(append([]string{"--socket", sock}, args...))
	err := root.Execute()
	return out.String(), err
}

// `filament bpf policy get` lists the endpoint's entries as the kernel
// holds them, with port blocks and the peer's labels.
func TestBPFPolicyGet(t *testing.T) {
	out, err := runCLI(t, "bpf", "policy", "get", "5")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	want := [][]string{
		{"DIRECTION", "IDENTITY", "LABELS", "PROTOCOL", "PORTS", "VERDICT"},
		{"ingress", "300", "app=n300", "TCP", "8080-8087", "allow"},
		{"ingress", "301", "app=n301", "ANY", "ANY", "deny"},
		{"egress", "ANY", "(any", "peer)", "UDP", "53", "allow"},
	}
	if len(lines) != len(want) {
		t.Fatalf("output:\n%s", out)
	}
	for i, w := range want {
		if got := strings.Fields(lines[i]); strings.Join(got, " ") != strings.Join(w, " ") {
			t.Errorf("line %d: %q, want %q", i, lines[i], w)
		}
	}
	out, err = runCLI(t, "bpf", "policy", "get", "5", "-o", "json")
	var es []types.BPFPolicyEntry
	if err != nil || json.Unmarshal([]byte(out), &es) != nil || len(es) != 3 || es[0].PortHigh != 8087 || !strings.Contains(out, `"portLow": 8080`) {
		t.Fatalf("json: %v %s", err, out)
	}
	if _, err := runCLI(t, "bpf", "policy", "get", "6"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("unknown endpoint: %v", err)
	}
	if _, err := runCLI(t, "bpf", "policy", "get", "0"); err == nil || !strings.Contains(err.Error(), `endpoint ID "0"`) {
		t.Fatalf("endpoint 0: %v", err)
	}
	out, err = runCLI(t, "bpf", "ipcache", "list")
	if err != nil || !strings.Contains(out, "10.0.1.0/24") || !strings.Contains(out, "app=n300") {
		t.Fatalf("ipcache: %v %s", err, out)
	}
}

// `filament endpoint get` says whether policy is enforced each way.
func TestEndpointGetShowsEnforcement(t *testing.T) {
	out, err := runCLI(t, "endpoint", "get", "5")
	if err != nil || !strings.Contains(out, "ingress enforced, egress not enforced") {
		t.Fatalf("table: %v %s", err, out)
	}
	out, err = runCLI(t, "endpoint", "get", "5", "-o", "json")
	if err != nil || !strings.Contains(out, `"policyEnforcement": {`) || !strings.Contains(out, `"egress": false`) {
		t.Fatalf("json: %v %s", err, out)
	}
	if got := enforcementText(nil); !strings.Contains(got, "unknown") {
		t.Fatalf("no datapath: %s", got)
	}
}

// A cluster-wide policy is listed with "(cluster-wide)" for its namespace.
func TestPolicyTableNamesClusterWide(t *testing.T) {
	var out bytes.Buffer
	c := &cli{out: &out}
	if err := c.print(nil, func(w io.Writer) {
		policyTable(w, []types.Policy{
			{Kind: types.KindCiliumClusterwideNetworkPolicy, Name: "everywhere", Rules: make([]json.RawMessage, 1)},
			{Kind: "CiliumNetworkPolicy", Namespace: "prod", Name: "here", Rules: make([]json.RawMessage, 2)},
		})
	}); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 || strings.Join(strings.Fields(lines[0]), " ") != "POLICY NAMESPACE KIND RULES" ||
		strings.Join(strings.Fields(lines[1]), " ") != "everywhere (cluster-wide) CiliumClusterwideNetworkPolicy 1" ||
		strings.Join(strings.Fields(lines[2]), " ") != "prod/here prod CiliumNetworkPolicy 2" {
		t.Fatalf("table:\n%s", out.String())
	}
}

// The status's enforcement mode says when policy audit mode is on.
func TestEnforcementModeText(t *testing.T) {
	if got := enforcementModeText(types.DatapathStatus{EnforcementMode: "default"}); got != "default" {
		t.Errorf("audit off: %q", got)
	}
	if got := enforcementModeText(types.DatapathStatus{EnforcementMode: "always", PolicyAuditMode: true}); !strings.Contains(got, "always (policy audit mode") {
		t.Errorf("audit on: %q", got)
	}
}
