package api

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/filament-net/filament/agent/api/types"
	"github.com/filament-net/filament/agent/endpoint"
	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/policy"
)

// An L4 prefix of the policy map reads back as the protocol and the block
// of ports it covers.
func TestL4Range(t *testing.T) {
	cases := []struct {
		l4     policy.L4
		proto  string
		lo, hi uint16
	}{
		{policy.L4{}, "ANY", 0, 65535},
		{policy.L4{Proto: 6, PrefixLen: 8}, "TCP", 0, 65535},
		{policy.L4{Proto: 17, Port: 53, PrefixLen: 24}, "UDP", 53, 53},
		{policy.L4{Proto: 6, Port: 8080, PrefixLen: 21}, "TCP", 8080, 8087},
		{policy.L4{Proto: 6, Port: 8088, PrefixLen: 23}, "TCP", 8088, 8089},
		{policy.L4{Proto: 6, Port: 0x8000, PrefixLen: 9}, "TCP", 32768, 65535},
		{policy.L4{Proto: 1, Port: 8, PrefixLen: 24}, "ICMP", 8, 8},
		{policy.L4{Proto: 132, PrefixLen: 8}, "SCTP", 0, 65535},
		{policy.L4{Proto: 47, PrefixLen: 8}, "proto-47", 0, 65535},
	}
	for _, c := range cases {
		proto, lo, hi := L4Range(c.l4)
		if proto != c.proto || lo != c.lo || hi != c.hi {
			t.Errorf("%v: got %s %d-%d, want %s %d-%d", c.l4, proto, lo, hi, c.proto, c.lo, c.hi)
		}
	}
}

type fakeMaps struct {
	entries map[policy.MapKey]bool
	ipcache map[netip.Prefix]identity.NumericIdentity
}

func (fakeMaps) Enforcement(ip netip.Addr) (bool, bool, error) {
	return ip == netip.MustParseAddr("10.0.0.5"), true, nil
}
func (f fakeMaps) PolicyEntries() (map[policy.MapKey]bool, error) { return f.entries, nil }
func (f fakeMaps) IPCache() (map[netip.Prefix]identity.NumericIdentity, error) {
	return f.ipcache, nil
}

type stubEPs struct{}

func (stubEPs) Create(context.Context, endpoint.CreateRequest) (endpoint.Endpoint, error) {
	return endpoint.Endpoint{}, nil
}
func (stubEPs) Delete(context.Context, uint16) error                            { return nil }
func (stubEPs) DeleteByContainer(context.Context, string, string) (bool, error) { return false, nil }
func (stubEPs) Lookup(string, string) (endpoint.Endpoint, error) {
	return endpoint.Endpoint{}, endpoint.ErrNotFound
}
func (stubEPs) List() []endpoint.Endpoint { return nil }
func (stubEPs) Get(id uint16) (endpoint.Endpoint, error) {
	if id != 5 {
		return endpoint.Endpoint{}, endpoint.ErrNotFound
	}
	return endpoint.Endpoint{ID: 5, IPv4: netip.MustParseAddr("10.0.0.5")}, nil
}

func get(t *testing.T, srv *httptest.Server, path string, out any) int {
	t.Helper()
	resp, err := http.Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil && resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode
}

// GET /v1/endpoints/{id}/bpf-policy lists that endpoint's policy map
// entries with the peer's labels and port blocks; an endpoint view says
// whether policy is enforced in each direction.
func TestBPFViews(t *testing.T) {
	maps := fakeMaps{
		entries: map[policy.MapKey]bool{
			{Endpoint: 5, Dir: policy.Ingress, Identity: 300, L4: policy.L4{Proto: 6, Port: 80, PrefixLen: 24}}: false,
			{Endpoint: 5, Dir: policy.Ingress, Identity: 301}:                                                   true,
			{Endpoint: 5, Dir: policy.Egress, Identity: 2, L4: policy.L4{Proto: 6, Port: 8080, PrefixLen: 21}}:  false,
			{Endpoint: 6, Dir: policy.Ingress, Identity: 300}:                                                   false, // another endpoint
		},
		ipcache: map[netip.Prefix]identity.NumericIdentity{netip.MustParsePrefix("10.0.1.7/32"): 300},
	}
	s := &Server{Endpoints: stubEPs{}, BPF: maps, IdentityLabels: func(n identity.NumericIdentity) []string {
		if n == 300 {
			return []string{"k8s:app=web"}
		}
		return nil
	}}
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()

	var got []types.BPFPolicyEntry
	if code := get(t, srv, "/v1/endpoints/5/bpf-policy", &got); code != http.StatusOK {
		t.Fatalf("status %d", code)
	}
	want := []types.BPFPolicyEntry{
		{Direction: "ingress", Identity: 300, Labels: []string{"k8s:app=web"}, Protocol: "TCP", PortLow: 80, PortHigh: 80, Verdict: "allow"},
		{Direction: "ingress", Identity: 301, Protocol: "ANY", PortLow: 0, PortHigh: 65535, Verdict: "deny"},
		{Direction: "egress", Identity: 2, Protocol: "TCP", PortLow: 8080, PortHigh: 8087, Verdict: "allow"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("entries:\n got %+v\nwant %+v", got, want)
	}
	if code := get(t, srv, "/v1/endpoints/9/bpf-policy", nil); code != http.StatusNotFound {
		t.Fatalf("unknown endpoint: %d", code)
	}

	var ep types.EndpointView
	if code := get(t, srv, "/v1/endpoints/5", &ep); code != http.StatusOK || ep.ID != 5 || ep.PolicyEnforcement == nil ||
		!ep.PolicyEnforcement.Ingress || !ep.PolicyEnforcement.Egress {
		t.Fatalf("endpoint view %d: %+v", code, ep)
	}

	var ipc []types.BPFIPCacheEntry
	if code := get(t, srv, "/v1/bpf/ipcache", &ipc); code != http.StatusOK || len(ipc) != 1 || ipc[0].Identity != 300 || ipc[0].Labels[0] != "k8s:app=web" {
		t.Fatalf("ipcache %d: %+v", code, ipc)
	}

	// Without a datapath the views say so.
	s.BPF = nil
	resp, err := http.Get(srv.URL + "/v1/endpoints/5/bpf-policy")
	if err != nil {
		t.Fatal(err)
	}
	var e types.Error
	json.NewDecoder(resp.Body).Decode(&e)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(e.Message, "datapath") {
		t.Fatalf("no datapath: %d %+v", resp.StatusCode, e)
	}
	var plain map[string]any
	if code := get(t, srv, "/v1/endpoints/5", &plain); code != http.StatusOK || plain["policyEnforcement"] != nil {
		t.Fatalf("no datapath, endpoint view %d: %v", code, plain)
	}
}
