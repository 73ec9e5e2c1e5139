package main

import (
	"bytes"
	"io"
	"net/netip"
	"strings"
	"testing"

	"github.com/filament-net/filament/agent/api/types"
)

// A graded service's list shows its options and, under the backends, the
// split per cluster: healthy/total with the level's health, the share by
// the rule and the share the table realises; a plain one has no split.
func TestServiceTableGradedSplit(t *testing.T) {
	fe := types.Frontend{IP: netip.MustParseAddr("10.96.0.20"), Port: 80, Protocol: "TCP", Type: "ClusterIP"}
	ss := []types.ServiceStatus{
		{Namespace: "shop", Name: "api", Algorithm: "random", Options: types.ServiceOptions{Global: true, Shared: true, Affinity: "local", Failover: "graded"},
			Frontends: []types.FrontendStatus{{Frontend: fe,
				Backends: []types.BackendView{{Addr: netip.MustParseAddrPort("10.0.0.5:8080"), Cluster: "c1", State: "active", Healthy: true, Preferred: true}},
				Split: &types.Split{LocalHealth: 0.42, RemoteHealth: 1, Slots: 1000, Clusters: []types.ClusterShare{
					{Cluster: "c1", Healthy: 3, Total: 10, Share: 0.42, Slots: 420},
					{Cluster: "c2", Healthy: 2, Total: 2, Share: 0.58, Slots: 580}}}}}},
		{Namespace: "shop", Name: "plain", Algorithm: "random", Frontends: []types.FrontendStatus{{Frontend: fe}}},
	}
	var out bytes.Buffer
	c := &cli{out: &out}
	if err := c.print(nil, func(w io.Writer) { serviceTable(w, ss) }); err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		lines = append(lines, strings.Join(strings.Fields(l), " "))
	}
	want := []string{
		"SERVICE FRONTEND TYPE OPTIONS BACKEND CLUSTER NODE STATE PREFERRED",
		"shop/api 10.96.0.20:80/TCP ClusterIP random,global,affinity=local,failover=graded 10.0.0.5:8080 c1 active yes",
		"shop/plain 10.96.0.20:80/TCP ClusterIP random (none)",
		"",
		"SERVICE FRONTEND CLUSTER HEALTHY SHARE TABLE",
		"shop/api 10.96.0.20:80/TCP c1 3/10 (local level, health 42.0%) 42.00% 42.00% (420/1000 slots)",
		"shop/api 10.96.0.20:80/TCP c2 2/2 (remote level, health 100.0%) 58.00% 58.00% (580/1000 slots)",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Fatalf("table:\n%s\nwant:\n%s", out.String(), strings.Join(want, "\n"))
	}
}
