package kube_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

const (
	chartDir     = "../helm/filament"
	customRender = "testdata/custom.yaml"
	customValues = "testdata/custom-values.yaml"
)

// chartSum is render.sh's chartsum: SHA-256 of sha256sum's lines
// ("<hex>  <path>") for the chart's files git tracks, in byte order of
// their paths from the chart's directory.
func chartSum(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("git", "-C", chartDir, "ls-files", "-z", ".").Output()
	if err != nil {
		t.Skipf("the chart's files not listed by git (not a git checkout?): %v", err)
	}
	var paths []string
	for _, p := range strings.Split(string(out), "\x00") {
		if p != "" {
			paths = append(paths, p)
		}
	}
	slices.Sort(paths)
	var lines bytes.Buffer
	for _, p := range paths {
		data, err := os.ReadFile(filepath.Join(chartDir, p))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&lines, "%x  %s\n", sha256.Sum256(data), p)
	}
	sum := sha256.Sum256(lines.Bytes())
	return hex.EncodeToString(sum[:])
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// headerValue is the value of a "# <key>: <value>" line in path's leading
// comment.
func headerValue(t *testing.T, path, key string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.HasPrefix(line, "#") {
			break
		}
		if v, ok := strings.CutPrefix(line, "# "+key+": "); ok {
			return v
		}
	}
	return ""
}

// Every committed render names the chart it came from: a chart (or the
// custom values) changed without `deploy/kube/render.sh` fails here, so
// the manifests users apply without Helm never lag the chart.
func TestRendersMatchChart(t *testing.T) {
	want := chartSum(t)
	for _, path := range []string{"filament.yaml", "filament-uninstall.yaml", customRender} {
		if got := headerValue(t, path, "chart sha256"); got != want {
			t.Errorf("%s was rendered from chart %q, the chart is now %s: run deploy/kube/render.sh", path, got, want)
		}
	}
	if got, want := headerValue(t, customRender, "values sha256"), fileSum(t, customValues); got != want {
		t.Errorf("%s was rendered from values %q, %s is now %s: run deploy/kube/render.sh", customRender, got, customValues, want)
	}
}

func containerArgs(t *testing.T, obj *unstructured.Unstructured, container string) []string {
	t.Helper()
	cs, _, _ := unstructured.NestedSlice(obj.Object, "spec", "template", "spec", "containers")
	for _, c := range cs {
		m, _ := c.(map[string]any)
		if m["name"] != container {
			continue
		}
		args, _, _ := unstructured.NestedStringSlice(m, "args")
		return args
	}
	t.Fatalf("%s has no container %s", describe(obj), container)
	return nil
}

func volumeOf(t *testing.T, obj *unstructured.Unstructured, name string) map[string]any {
	t.Helper()
	vs, _, _ := unstructured.NestedSlice(obj.Object, "spec", "template", "spec", "volumes")
	for _, v := range vs {
		if m, _ := v.(map[string]any); m["name"] == name {
			return m
		}
	}
	t.Fatalf("%s has no volume %s", describe(obj), name)
	return nil
}

func field(obj map[string]any, path ...string) string {
	v, found, _ := unstructured.NestedFieldNoCopy(obj, path...)
	if !found {
		return "<absent>"
	}
	return fmt.Sprint(v)
}

// The chart rendered with a value other than the default for each setting
// that becomes a flag, port, Secret, path or the conflist
// (testdata/custom-values.yaml) carries each value everywhere it has to:
// the agents' flags, the apiserver's port on its container, its Service and
// the agents' etcd endpoint, the Secrets each mounts, the CNI directories
// and conflist. (A port set in one place and not the others was a bug of
// 2026-12-07.)
func TestChartCustomValuesHonoured(t *testing.T) {
	docs := readDocs(t, customRender)
	ds := find(docs, "DaemonSet", "filament")
	dep := find(docs, "Deployment", "filament-clustermesh-apiserver")
	svc := find(docs, "Service", "filament-clustermesh-apiserver")
	cm := find(docs, "ConfigMap", "filament-cni-config")
	if ds == nil || dep == nil || svc == nil || cm == nil {
		t.Fatalf("custom render lacks an object: DaemonSet %v, Deployment %v, Service %v, ConfigMap %v", ds != nil, dep != nil, svc != nil, cm != nil)
	}

	agent := containerArgs(t, ds, "agent")
	for _, want := range []string{
		"--cluster-name=west", "--cluster-id=7", "--cluster-pool=10.50.0.0/16", "--pod-cidr-size=26",
		"--routing=native", "--native-forwarding=kernel", "--encryption=wireguard", "--encryption-strict",
		"--lb-algorithm=maglev", "--enforcement-mode=always", "--log-level=debug",
		"--etcd-endpoints=https://10.96.7.7:2400",
		"--k8s-in-cluster", "--k8s-api-server=192.0.2.10:7443",
		"--clustermesh-ttl=10m", "--clustermesh-pod-ranges=10.0.0.0/8,east=10.2.0.0/16",
		"--clustermesh-cluster-ids=east=3", "--clustermesh-cache", "--remote-ipcache=sparse",
		"--policy-all-clusters",
	} {
		if !slices.Contains(agent, want) {
			t.Errorf("agent args lack %s: %q", want, agent)
		}
	}
	if slices.Contains(agent, "--memberlist-port=0") {
		t.Errorf("agent args turn failure detection off though a gossip key is given: %q", agent)
	}
	// The extra arguments come last, so that they win.
	if agent[len(agent)-1] != "--policy-all-clusters" {
		t.Errorf("agent.extraArgs not last: %q", agent)
	}
	if got := field(ds.Object, "spec", "template", "spec", "priorityClassName"); got != "filament-agent-priority" {
		t.Errorf("agent priorityClassName %s", got)
	}

	api := containerArgs(t, dep, "apiserver")
	for _, want := range []string{
		"--listen-client-url=https://$(NODE_IP):2400", "--etcd-quota=4Gi", "--retire-shared-remote",
	} {
		if !slices.Contains(api, want) {
			t.Errorf("apiserver args lack %s: %q", want, api)
		}
	}
	cs, _, _ := unstructured.NestedSlice(dep.Object, "spec", "template", "spec", "containers")
	if got := field(cs[0].(map[string]any), "ports"); !strings.Contains(got, "containerPort:2400") {
		t.Errorf("apiserver container ports %s, want 2400", got)
	}
	ports, _, _ := unstructured.NestedSlice(svc.Object, "spec", "ports")
	if len(ports) != 1 {
		t.Fatalf("Service ports %v", ports)
	}
	p := ports[0].(map[string]any)
	if field(p, "port") != "2400" || field(p, "targetPort") != "2400" || field(p, "nodePort") != "32379" {
		t.Errorf("Service port %s targetPort %s nodePort %s, want 2400, 2400, 32379", field(p, "port"), field(p, "targetPort"), field(p, "nodePort"))
	}
	if field(svc.Object, "spec", "type") != "NodePort" || field(svc.Object, "spec", "clusterIP") != "10.96.7.7" {
		t.Errorf("Service type %s clusterIP %s", field(svc.Object, "spec", "type"), field(svc.Object, "spec", "clusterIP"))
	}
	if got := field(volumeOf(t, dep, "data"), "hostPath", "path"); got != "/var/lib/filament-etcd" {
		t.Errorf("apiserver data hostPath %s", got)
	}

	for _, v := range []struct {
		obj            *unstructured.Unstructured
		volume, secret string
	}{
		{ds, "etcd-tls", "west-bundle"}, {ds, "gossip-key", "west-gossip"}, {ds, "clustermesh-remotes", "west-remotes"},
		{dep, "bundle", "west-bundle"}, {dep, "mesh-remotes", "west-cache-remotes"},
	} {
		if got := field(volumeOf(t, v.obj, v.volume), "secret", "secretName"); got != v.secret {
			t.Errorf("%s volume %s: Secret %s, want %s", describe(v.obj), v.volume, got, v.secret)
		}
	}
	for volume, path := range map[string]string{"cni-bin": "/opt/west/bin", "cni-conf": "/etc/west/net.d"} {
		if got := field(volumeOf(t, ds, volume), "hostPath", "path"); got != path {
			t.Errorf("agent volume %s: hostPath %s, want %s", volume, got, path)
		}
	}
	conflist, _, _ := unstructured.NestedString(cm.Object, "data", "05-filament.conflist")
	if !strings.Contains(conflist, `"cniVersion": "1.1.0"`) {
		t.Errorf("conflist 05-filament.conflist absent or not of version 1.1.0: %q", conflist)
	}
}
