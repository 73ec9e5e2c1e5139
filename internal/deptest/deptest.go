// Package deptest owns the dependency rules of the binaries, in the style
// of tailscale's deps_test.go: a binary's test lists the packages it links
// (`go list -deps`) and fails naming each one it must not link and why.
package deptest

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// ClientBadDeps are the modules a client of the agent (the CLI, the CNI
// plugin) must not link: they belong to the agent and its control plane,
// and reach the clients only through the API's contract (agent/api/types).
// A key matches the package of that path and every package under it.
var ClientBadDeps = map[string]string{
	"github.com/cilium/ebpf":            "the datapath is the agent's; read it through the agent API",
	"go.etcd.io/etcd/server":            "an embedded etcd is the agent's (the etcd client is allowed)",
	"golang.zx2c4.com/wireguard/device": "WireGuard devices are the agent's; see them through the agent API",
	"k8s.io/client-go":                  "watching Kubernetes is the agent's",
}

// Check fails t for every package pkg (an import path or a directory such
// as ".") depends on that matches a key of bad.
func Check(t *testing.T, pkg string, bad map[string]string) {
	t.Helper()
	deps := list(t, pkg, "{{.ImportPath}}")
	self := deps[len(deps)-1] // go list -deps lists pkg itself last
	for _, dep := range Violations(deps, bad) {
		t.Errorf("%s depends on %s: %s", self, dep.Package, dep.Reason)
	}
}

// CheckStdlibOnly fails t for every package outside the standard library
// that pkg depends on, other than pkg itself and those in allowed.
func CheckStdlibOnly(t *testing.T, pkg string, allowed ...string) {
	t.Helper()
	deps := list(t, pkg, "{{.ImportPath}}")
	self := deps[len(deps)-1]
	for _, dep := range list(t, pkg, "{{if not .Standard}}{{.ImportPath}}{{end}}") {
		if dep != self && !slices.Contains(allowed, dep) {
			t.Errorf("%s depends on %s: it may import only the standard library", self, dep)
		}
	}
}

// list runs go list -deps with format f on pkg.
func list(t *testing.T, pkg, f string) []string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command to list dependencies: %v", err)
	}
	out, err := exec.Command(goBin, "list", "-deps", "-f", f, pkg).Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			t.Fatalf("go list -deps %s: %v\n%s", pkg, err, ee.Stderr)
		}
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	deps := strings.Fields(string(out))
	if len(deps) == 0 {
		t.Fatalf("go list -deps %s: no packages", pkg)
	}
	return deps
}

// Violation is one forbidden package and why it is forbidden.
type Violation struct {
	Package, Reason string
}

// Violations lists the packages of deps that match a key of bad: the key
// itself or a package under it.
func Violations(deps []string, bad map[string]string) []Violation {
	var out []Violation
	for _, dep := range deps {
		for prefix, why := range bad {
			if dep == prefix || strings.HasPrefix(dep, prefix+"/") {
				out = append(out, Violation{dep, why})
			}
		}
	}
	return out
}
