package lab_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// onlyPort7001 selects app=b and lets app=a reach it on port 7001 only:
// with it, a -> b:7000 is denied.
const onlyPort7001 = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: only-7001}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [{port: "7001", protocol: TCP}]}]
`

// onlyPort7000NP is a NetworkPolicy only-7001 (named like onlyPort7001)
// letting app=a reach app=b on port 7000 only.
const onlyPort7000NP = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-7001}
spec:
  podSelector: {matchLabels: {app: b}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: a}}}]
    ports: [{port: 7000, protocol: TCP}]
`

// waitPorts waits until from reaches exactly the ports in want (space
// separated) of ip among 7000-7002 over TCP, logging each change.
func waitPorts(t *testing.T, from, ip, what, want string) {
	t.Helper()
	last := ""
	eventually(t, what+": reaches "+ip+" on "+want, func() bool {
		var open []string
		for _, port := range []int{7000, 7001, 7002} {
			if reach(t, from, "tcp", ip, port) {
				open = append(open, fmt.Sprint(port))
			}
		}
		if got := strings.Join(open, " "); got != last {
			t.Logf("%s: reaches %s on %q", what, ip, got)
			last = got
		}
		return last == want
	})
}

// A policy is the cluster's, not the node's: imported on n1 it governs a
// pod on n2 (a real connection is refused), n2 shows it, and deleting it
// on n2 removes it from n1 too and the connection works again.
func TestPolicyClusterWide(t *testing.T) {
	l := labtest.UpRouting(t, 2, "tunnel")
	a := labtest.Pod(t, l, "n1", "a", "app=a")
	b := labtest.Pod(t, l, "n2", "b", "app=b")
	eventually(t, "a pings b across nodes", func() bool { return pingOK(l, "a", b.IP) })
	serve(t, lab.NetNSPath(b.NetNS), 7000)
	if !reach(t, lab.NetNSPath(a.NetNS), "tcp", b.IP, 7000) {
		t.Fatal("a -> b:7000 before any policy")
	}

	labtest.ImportPolicy(t, l, "n1", onlyPort7001)
	if out, err := labtest.NodeRun(t, l, "n2", "filament", "policy", "get", "default/only-7001"); err != nil || !strings.Contains(out, "only-7001") {
		t.Fatalf("policy get on n2 after an import on n1: %v %s", err, out)
	}
	eventually(t, "the policy imported on n1 denies a -> b:7000 on n2", func() bool {
		return !reach(t, lab.NetNSPath(a.NetNS), "tcp", b.IP, 7000)
	})
	for _, n := range []string{"n1", "n2"} {
		out, err := labtest.NodeRun(t, l, n, "filament", "policy", "trace", "--src", "app=a", "--dst", "app=b", "--dport", "7000")
		if err != nil || !strings.Contains(out, "denied") {
			t.Errorf("policy trace on %s: %v %s", n, err, out)
		}
	}

	if out, err := labtest.NodeRun(t, l, "n2", "filament", "policy", "delete", "default/only-7001"); err != nil {
		t.Fatalf("policy delete on n2: %v %s", err, out)
	}
	eventually(t, "n1 no longer has the policy deleted on n2", func() bool {
		_, err := labtest.NodeRun(t, l, "n1", "filament", "policy", "get", "default/only-7001")
		return err != nil
	})
	eventually(t, "a -> b:7000 connects again", func() bool {
		return reach(t, lab.NetNSPath(a.NetNS), "tcp", b.IP, 7000)
	})

	// A NetworkPolicy and a CiliumNetworkPolicy of one name, imported with
	// the CLI, are two policies on every node: the NetworkPolicy lets a
	// reach b:7000, the CNP b:7001, both together both and nothing else
	// (before 2026-12-04 the CNP's import replaced the NetworkPolicy, and
	// a -> b:7000 was denied). Deleting the CNP leaves the NetworkPolicy.
	serve(t, lab.NetNSPath(b.NetNS), 7001)
	serve(t, lab.NetNSPath(b.NetNS), 7002)
	expectPorts := func(what, want string) { t.Helper(); waitPorts(t, lab.NetNSPath(a.NetNS), b.IP, what, want) }
	labtest.ImportPolicy(t, l, "n1", onlyPort7000NP)
	expectPorts("the NetworkPolicy alone", "7000")
	labtest.ImportPolicy(t, l, "n2", onlyPort7001)
	expectPorts("the NetworkPolicy and the CNP of its name", "7000 7001")
	if out, err := labtest.NodeRun(t, l, "n1", "filament", "policy", "delete", "default/only-7001"); err != nil {
		t.Fatalf("policy delete default/only-7001 (the CNP): %v %s", err, out)
	}
	expectPorts("the NetworkPolicy after the CNP's delete", "7000")
	if out, err := labtest.NodeRun(t, l, "n2", "filament", "policy", "delete", "default/networkpolicy/only-7001"); err != nil {
		t.Fatalf("policy delete default/networkpolicy/only-7001: %v %s", err, out)
	}
	expectPorts("no policy", "7000 7001 7002")
}
