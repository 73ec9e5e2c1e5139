package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

type cniErr struct {
	Code    uint   `json:"code"`
	Msg     string `json:"msg"`
	Details string `json:"details"`
}

// call runs filament-cni as a runtime does and decodes its answer.
func call(t *testing.T, l *lab.Lab, command, cid, netns string, conf []byte) (*types100.Result, *cniErr) {
	t.Helper()
	n, _ := l.Node("n1")
	out, err := l.CNI(n, command, cid, netns, "eth0", "K8S_POD_NAMESPACE=team-a;K8S_POD_NAME="+cid, conf)
	if err != nil {
		var ce cniErr
		if json.Unmarshal(out, &ce) != nil || ce.Msg == "" {
			t.Fatalf("%s: %v, stdout %q is not CNI error JSON", command, err, out)
		}
		return nil, &ce
	}
	if command != "ADD" {
		return nil, nil
	}
	var r types100.Result
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("ADD result: %v: %s", err, out)
	}
	return &r, nil
}

func conf(l *lab.Lab, version string, labels ...string) []byte {
	n, _ := l.Node("n1")
	var m map[string]any
	json.Unmarshal(n.NetConf(labels), &m)
	m["cniVersion"] = version
	b, _ := json.Marshal(m)
	return b
}

func withPrevResult(c []byte, r *types100.Result) []byte {
	var m map[string]any
	json.Unmarshal(c, &m)
	b, _ := json.Marshal(r)
	var prev map[string]any
	json.Unmarshal(b, &prev)
	m["prevResult"] = prev
	out, _ := json.Marshal(m)
	return out
}

// The binary invoked exactly as a container runtime does (CNI_* environment,
// config on stdin) for every command of spec 1.0.0 and 1.1.0.
func TestBinaryAsRuntimeInvokesIt(t *testing.T) {
	l := labtest.Up(t, 1, 24)
	for _, ver := range []string{"1.0.0", "1.1.0"} {
		t.Run(ver, func(t *testing.T) {
			cid := "ctr-" + strings.ReplaceAll(ver, ".", "")
			ns := labtest.NetNS(t, "fcni-"+l.Name+"-"+cid)
			c := conf(l, ver, "app=api", "k8s:tier=back")
			r, e := call(t, l, "ADD", cid, ns, c)
			if e != nil {
				t.Fatalf("ADD: %+v", e)
			}
			if r.CNIVersion != ver || len(r.Interfaces) != 2 || r.Interfaces[1].Sandbox != ns || r.Interfaces[1].Name != "eth0" ||
				len(r.IPs) != 1 || *r.IPs[0].Interface != 1 || r.IPs[0].Gateway.String() != labtest.PodAddr(t, l, "n1", 1) ||
				len(r.Routes) != 1 || r.Routes[0].Dst.String() != "0.0.0.0/0" {
				b, _ := json.Marshal(r)
				t.Fatalf("ADD result: %s", b)
			}
			eps := labtest.Endpoints(t, l, "n1")
			var found bool
			for _, ep := range eps {
				if ep.ContainerID == cid {
					found = true
					if ep.IPv4.String() != r.IPs[0].Address.IP.String() || ep.Namespace != "team-a" || ep.PodName != cid ||
						!strings.Contains(strings.Join(ep.LabelStrings(), ","), "k8s:tier=back") {
						t.Fatalf("endpoint %+v does not match the ADD", ep)
					}
				}
			}
			if !found {
				t.Fatal("ADD made no endpoint")
			}
			if _, e := call(t, l, "CHECK", cid, ns, withPrevResult(c, r)); e != nil {
				t.Fatalf("CHECK: %+v", e)
			}
			if _, e := call(t, l, "CHECK", cid, ns, c); e == nil || e.Code != uint(types.ErrInvalidNetworkConfig) {
				t.Fatalf("CHECK without prevResult: %+v", e)
			}
			if ver == "1.1.0" {
				if _, e := call(t, l, "STATUS", "", "", c); e != nil {
					t.Fatalf("STATUS: %+v", e)
				}
			}
			for i := 0; i < 2; i++ { // DEL is idempotent
				if _, e := call(t, l, "DEL", cid, ns, c); e != nil {
					t.Fatalf("DEL #%d: %+v", i+1, e)
				}
			}
			for _, ep := range labtest.Endpoints(t, l, "n1") {
				if ep.ContainerID == cid {
					t.Fatal("endpoint left after DEL")
				}
			}
		})
	}
	n, _ := l.Node("n1")
	out, err := l.CNI(n, "VERSION", "", "", "", "", []byte(`{"cniVersion":"1.1.0"}`))
	if err != nil || !strings.Contains(string(out), `"1.0.0"`) || !strings.Contains(string(out), `"1.1.0"`) {
		t.Fatalf("VERSION: %v %s", err, out)
	}
	// With the agent down: STATUS says the plugin is unavailable, DEL asks to retry.
	if err := l.StopAgent("n1"); err != nil {
		t.Fatal(err)
	}
	if _, e := call(t, l, "STATUS", "", "", conf(l, "1.1.0")); e == nil || e.Code != uint(types.ErrPluginNotAvailable) {
		t.Fatalf("STATUS with the agent down: %+v", e)
	}
	if _, e := call(t, l, "DEL", "x", "/nonexistent", conf(l, "1.1.0")); e == nil || e.Code != uint(types.ErrTryAgainLater) {
		t.Fatalf("DEL with the agent down: %+v", e)
	}
}

// The plugin through libcni, as containerd and CRI-O drive it: add, check,
// status, GC of attachments the runtime no longer knows, delete.
func TestThroughLibcni(t *testing.T) {
	l := labtest.Up(t, 1, 24)
	n, _ := l.Node("n1")
	// A runtime finds plugins by their type: install filament-cni as "filament".
	pluginDir := t.TempDir()
	if err := os.Symlink(filepath.Join(labtest.BinDir(t), "filament-cni"), filepath.Join(pluginDir, "filament")); err != nil {
		t.Fatal(err)
	}
	list, err := libcni.NetworkConfFromBytes([]byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"filament","plugins":[{"type":"filament","agentSocket":%q}]}`, n.Socket)))
	if err != nil {
		t.Fatal(err)
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{pluginDir}, t.TempDir(), nil)
	nodeNS, err := ns.GetNS(lab.NetNSPath(n.NetNS))
	if err != nil {
		t.Fatal(err)
	}
	defer nodeNS.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rts := map[string]*libcni.RuntimeConf{}
	for _, id := range []string{"keep", "stale"} {
		rt := &libcni.RuntimeConf{ContainerID: "libcni-" + id, NetNS: labtest.NetNS(t, "fcni-"+l.Name+"-"+id), IfName: "eth0",
			Args: [][2]string{{"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", id}}}
		rts[id] = rt
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			t.Fatalf("add %s: %v", id, err)
		}
		r, err := types100.NewResultFromResult(res)
		if err != nil || len(r.IPs) != 1 {
			t.Fatalf("add %s result: %v %+v", id, err, res)
		}
		// A runtime runs the plugin in the node's namespace, where CHECK
		// finds the node side of the endpoint.
		if err := nodeNS.Do(func(ns.NetNS) error { return cni.CheckNetworkList(ctx, list, rt) }); err != nil {
			t.Fatalf("check %s: %v", id, err)
		}
	}
	if err := cni.GetStatusNetworkList(ctx, list); err != nil {
		t.Fatalf("status: %v", err)
	}
	if err := cni.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: "libcni-keep", IfName: "eth0"}}}); err != nil {
		t.Fatalf("gc: %v", err)
	}
	var left []string
	for _, ep := range labtest.Endpoints(t, l, "n1") {
		left = append(left, ep.ContainerID)
	}
	sort.Strings(left)
	if strings.Join(left, ",") != "libcni-keep" {
		t.Fatalf("after GC: %v", left)
	}
	if err := cni.DelNetworkList(ctx, list, rts["keep"]); err != nil {
		t.Fatalf("del: %v", err)
	}
	if err := cni.DelNetworkList(ctx, list, rts["stale"]); err != nil {
		t.Fatalf("del of a collected attachment: %v", err)
	}
	if eps := labtest.Endpoints(t, l, "n1"); len(eps) != 0 {
		t.Fatalf("endpoints left: %+v", eps)
	}
}

// A second ADD for the same container interface fails with the plugin's
// code and leaves the first endpoint as it was.
func TestDuplicateContainerIDRejected(t *testing.T) {
	l := labtest.Up(t, 1, 24)
	ns := labtest.NetNS(t, "fcni-"+l.Name+"-dup")
	c := conf(l, "1.1.0", "app=a")
	r, e := call(t, l, "ADD", "dup", ns, c)
	if e != nil {
		t.Fatal(e)
	}
	before := labtest.Endpoints(t, l, "n1")
	_, e = call(t, l, "ADD", "dup", ns, c)
	if e == nil || e.Code != 100 || !strings.Contains(e.Msg, `"dup"`) {
		t.Fatalf("duplicate ADD: %+v", e)
	}
	after := labtest.Endpoints(t, l, "n1")
	if len(after) != 1 || after[0].IPv4 != before[0].IPv4 || after[0].IPv4.String() != r.IPs[0].Address.IP.String() {
		t.Fatalf("duplicate ADD changed state: %+v", after)
	}
	if _, e := call(t, l, "CHECK", "dup", ns, withPrevResult(c, r)); e != nil {
		t.Fatalf("first endpoint broken after the duplicate: %+v", e)
	}
}

// A /29 pod CIDR holds five pods; the sixth ADD fails naming the CIDR and
// leaves nothing behind.
func TestExhaustedPodCIDR(t *testing.T) {
	l := labtest.Up(t, 1, 29)
	c := conf(l, "1.1.0", "app=a")
	for i := 0; i < 5; i++ {
		if _, e := call(t, l, "ADD", fmt.Sprintf("c%d", i), labtest.NetNS(t, fmt.Sprintf("fcni-%s-%d", l.Name, i)), c); e != nil {
			t.Fatalf("ADD %d: %+v", i, e)
		}
	}
	ns := labtest.NetNS(t, "fcni-"+l.Name+"-full")
	_, e := call(t, l, "ADD", "c-full", ns, c)
	n, _ := l.Node("n1")
	if e == nil || e.Code != 101 || !strings.Contains(e.Msg, n.PodCIDR) || !strings.HasSuffix(n.PodCIDR, "/29") {
		t.Fatalf("ADD into a full CIDR: %+v", e)
	}
	if eps := labtest.Endpoints(t, l, "n1"); len(eps) != 5 {
		t.Fatalf("%d endpoints after the failed ADD", len(eps))
	}
	assertNoEth0(t, ns)
	// Freeing one address makes room again, once its hold has passed
	// (ipam.MinReuseDelay): until then the ADD is told to try again later
	// (code 11), naming the hold, and leaves nothing behind.
	if _, e := call(t, l, "DEL", "c0", "", c); e != nil {
		t.Fatal(e)
	}
	_, e = call(t, l, "ADD", "c-full", ns, c)
	if e == nil || e.Code != 11 || !strings.Contains(e.Msg, "released less than") {
		t.Fatalf("ADD just after a DEL freed the only address: %+v, want code 11 naming the hold", e)
	}
	if eps := labtest.Endpoints(t, l, "n1"); len(eps) != 4 {
		t.Fatalf("%d endpoints after the held ADD", len(eps))
	}
	assertNoEth0(t, ns)
}

func assertNoEth0(t *testing.T, nsPath string) {
	t.Helper()
	name := filepath.Base(nsPath)
	out, _ := exec.Command("ip", "netns", "exec", name, "ip", "-o", "link").CombinedOutput()
	if strings.Contains(string(out), "eth0") {
		t.Fatalf("a failed ADD left eth0 in %s:\n%s", name, out)
	}
}

// Invalid label keys are refused with the key named; no endpoint, address
// or interface is left.
func TestInvalidLabelKeyRejected(t *testing.T) {
	l := labtest.Up(t, 1, 24)
	ns := labtest.NetNS(t, "fcni-"+l.Name+"-lbl")
	_, e := call(t, l, "ADD", "lbl", ns, conf(l, "1.1.0", "bad key!=x"))
	if e == nil || e.Code != uint(types.ErrInvalidNetworkConfig) || !strings.Contains(e.Msg, "args.cni.labels[0]") || !strings.Contains(e.Msg, "bad key!") {
		t.Fatalf("bad label key: %+v", e)
	}
	if eps := labtest.Endpoints(t, l, "n1"); len(eps) != 0 {
		t.Fatalf("endpoints after a rejected ADD: %+v", eps)
	}
	assertNoEth0(t, ns)
	r, e := call(t, l, "ADD", "lbl", ns, conf(l, "1.1.0", "app=ok"))
	if e != nil || r.IPs[0].Address.IP.String() != labtest.PodAddr(t, l, "n1", 2) {
		t.Fatalf("the rejected ADD consumed state: %+v %+v", e, r)
	}
}

// Bad network configs and environments fail with the spec's codes and name the field.
func TestBadCNIConfigRejected(t *testing.T) {
	l := labtest.Up(t, 1, 24)
	ns := labtest.NetNS(t, "fcni-"+l.Name+"-cfg")
	n, _ := l.Node("n1")
	cases := []struct {
		name string
		conf string
		ns   string
		code uint
		want string
	}{
		{"not JSON", `{"cniVersion":"1.1.0",`, ns, uint(types.ErrDecodingFailure), ""},
		{"wrong type", `{"cniVersion":"1.1.0","name":"x","type":"bridge"}`, ns, uint(types.ErrInvalidNetworkConfig), "type"},
		{"no name", `{"cniVersion":"1.1.0","type":"filament"}`, ns, uint(types.ErrInvalidNetworkConfig), "name"},
		{"relative socket", `{"cniVersion":"1.1.0","name":"x","type":"filament","agentSocket":"agent.sock"}`, ns, uint(types.ErrInvalidNetworkConfig), "agentSocket"},
		{"unsupported version", `{"cniVersion":"0.1.0","name":"x","type":"filament"}`, ns, uint(types.ErrIncompatibleCNIVersion), "0.1.0"},
		{"missing netns", fmt.Sprintf(`{"cniVersion":"1.1.0","name":"x","type":"filament","agentSocket":%q}`, n.Socket), "/var/run/netns/does-not-exist", uint(types.ErrUnknownContainer), "does-not-exist"},
	}
	for _, c := range cases {
		_, e := call(t, l, "ADD", "cfg", c.ns, []byte(c.conf))
		if e == nil || e.Code != c.code || !strings.Contains(e.Msg+" "+e.Details, c.want) {
			t.Errorf("%s: want code %d naming %q, got %+v", c.name, c.code, c.want, e)
		}
	}
	if eps := labtest.Endpoints(t, l, "n1"); len(eps) != 0 {
		t.Fatalf("endpoints after rejected ADDs: %+v", eps)
	}
}

// Concurrent ADDs, as a runtime starting many pods at once, never hand out
// one address twice.
func TestConcurrentAddsGetDistinctAddresses(t *testing.T) {
	l := labtest.Up(t, 1, 24)
	const pods = 12
	c := conf(l, "1.1.0", "app=burst")
	nss := make([]string, pods)
	for i := range nss {
		nss[i] = labtest.NetNS(t, fmt.Sprintf("fcni-%s-b%d", l.Name, i))
	}
	ips := make([]string, pods)
	errs := make([]*cniErr, pods)
	var wg sync.WaitGroup
	for i := range nss {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			r, e := call(t, l, "ADD", fmt.Sprintf("burst-%d", i), nss[i], c)
			errs[i] = e
			if r != nil {
				ips[i] = r.IPs[0].Address.IP.String()
			}
		}(i)
	}
	wg.Wait()
	seen := map[string]int{}
	for i := range ips {
		if errs[i] != nil {
			t.Fatalf("ADD %d: %+v", i, errs[i])
		}
		if j, dup := seen[ips[i]]; dup {
			t.Fatalf("pods %d and %d both got %s", j, i, ips[i])
		}
		seen[ips[i]] = i
	}
	if eps := labtest.Endpoints(t, l, "n1"); len(eps) != pods {
		t.Fatalf("%d endpoints for %d ADDs", len(eps), pods)
	}
}

// A workload cannot claim a reserved identity or a label the agent sets
// (issue 13, item 3): ADD fails with code 7 naming the label, and nothing
// is left behind.
func TestReservedLabelRejected(t *testing.T) {
	l := labtest.Up(t, 1, 24)
	ns := labtest.NetNS(t, "fcni-"+l.Name+"-rsv")
	for _, lbl := range []string{"reserved:host", "reserved:health", "reserved:world", "cidr:10.0.0.0/8", "io.kubernetes.pod.namespace=kube-system", "container:filament.io/cluster=west"} {
		_, e := call(t, l, "ADD", "rsv", ns, conf(l, "1.1.0", "app=a", lbl))
		if e == nil || e.Code != uint(types.ErrInvalidNetworkConfig) || !strings.Contains(e.Msg, lbl[strings.IndexByte(lbl, ':')+1:]) {
			t.Errorf("label %q: want code 7 naming it, got %+v", lbl, e)
		}
	}
	if eps := labtest.Endpoints(t, l, "n1"); len(eps) != 0 {
		t.Fatalf("endpoints after refused ADDs: %+v", eps)
	}
	assertNoEth0(t, ns)
}

// GC only collects the attachments of its own network (issue 13, item 8):
// GC on network "netb" with an empty valid-attachments list removes netb's
// stale endpoints and leaves the pods of network "filament" alone.
func TestGCOnlyTouchesItsNetwork(t *testing.T) {
	l := labtest.Up(t, 1, 24)
	named := func(c []byte, name string, valid ...string) []byte {
		var m map[string]any
		json.Unmarshal(c, &m)
		m["name"] = name
		if valid != nil {
			atts := []map[string]string{}
			for _, cid := range valid {
				atts = append(atts, map[string]string{"containerID": cid, "ifname": "eth0"})
			}
			m["cni.dev/valid-attachments"] = atts
		}
		b, _ := json.Marshal(m)
		return b
	}
	c := conf(l, "1.1.0", "app=a")
	for _, p := range []struct{ cid, net string }{{"gc-a", "filament"}, {"gc-b1", "netb"}, {"gc-b2", "netb"}} {
		if _, e := call(t, l, "ADD", p.cid, labtest.NetNS(t, "fcni-"+l.Name+"-"+p.cid), named(c, p.net)); e != nil {
			t.Fatalf("ADD %s on %s: %+v", p.cid, p.net, e)
		}
	}
	for _, ep := range labtest.Endpoints(t, l, "n1") {
		if want := map[string]string{"gc-a": "filament", "gc-b1": "netb", "gc-b2": "netb"}[ep.ContainerID]; ep.Network != want {
			t.Errorf("endpoint %s records network %q, want %q", ep.ContainerID, ep.Network, want)
		}
	}
	left := func() string {
		var ids []string
		for _, ep := range labtest.Endpoints(t, l, "n1") {
			ids = append(ids, ep.ContainerID)
		}
		sort.Strings(ids)
		return strings.Join(ids, ",")
	}
	if _, e := call(t, l, "GC", "", "", named(c, "netb", "gc-b1")); e != nil {
		t.Fatalf("GC netb: %+v", e)
	}
	if got := left(); got != "gc-a,gc-b1" {
		t.Fatalf("after GC of netb keeping gc-b1: %s", got)
	}
	if _, e := call(t, l, "GC", "", "", named(c, "accnet", []string{}...)); e != nil {
		t.Fatalf("GC accnet: %+v", e)
	}
	if _, e := call(t, l, "GC", "", "", named(c, "netb", []string{}...)); e != nil {
		t.Fatalf("GC netb: %+v", e)
	}
	if got := left(); got != "gc-a" {
		t.Fatalf("after GC of accnet and netb with no valid attachments: %s", got)
	}
}

// CHECK notices what was removed behind the plugin's back (issue 13, item
// 13): the pod's default route, its route to the gateway, its address, the
// node-side /32 route and the host-side veth each make it fail naming the
// missing piece; putting it back makes CHECK pass again.
func TestCheckNoticesDeletedRoutes(t *testing.T) {
	l := labtest.Up(t, 1, 24)
	n, _ := l.Node("n1")
	ns := labtest.NetNS(t, "fcni-"+l.Name+"-chk")
	pod := filepath.Base(ns)
	c := conf(l, "1.1.0", "app=a")
	r, e := call(t, l, "ADD", "chk", ns, c)
	if e != nil {
		t.Fatal(e)
	}
	withPrev := withPrevResult(c, r)
	if _, e := call(t, l, "CHECK", "chk", ns, withPrev); e != nil {
		t.Fatalf("CHECK of an intact endpoint: %+v", e)
	}
	ip, gw := r.IPs[0].Address.IP.String(), r.IPs[0].Gateway.String()
	host := r.Interfaces[0].Name
	ipcmd := func(netns string, args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", append([]string{"-n", netns}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip -n %s %v: %v %s", netns, args, err, out)
		}
	}
	for _, c := range []struct {
		name     string
		netns    string
		del, add []string
		want     string
	}{
		{"pod default route", pod, []string{"route", "del", "default"}, []string{"route", "add", "default", "via", gw, "dev", "eth0"}, "default route via " + gw},
		{"pod gateway route", pod, []string{"route", "del", gw + "/32", "dev", "eth0"}, []string{"route", "add", gw + "/32", "dev", "eth0", "scope", "link"}, "route to gateway " + gw},
		{"pod address", pod, []string{"addr", "del", ip + "/32", "dev", "eth0"}, []string{"addr", "add", ip + "/32", "dev", "eth0"}, "address " + ip},
		{"node route", n.NetNS, []string{"route", "del", ip + "/32"}, []string{"route", "add", ip + "/32", "dev", host, "scope", "link"}, "route to " + ip + "/32 via " + host},
		{"host veth down", n.NetNS, []string{"link", "set", host, "down"}, []string{"link", "set", host, "up"}, host},
	} {
		ipcmd(c.netns, c.del...)
		_, e := call(t, l, "CHECK", "chk", ns, withPrev)
		if e == nil || e.Code != 102 || !strings.Contains(e.Msg, c.want) {
			t.Errorf("%s removed: CHECK want code 102 naming %q, got %+v", c.name, c.want, e)
		}
		ipcmd(c.netns, c.add...)
		if c.name == "pod address" { // the address's removal took the routes through it
			ipcmd(pod, "route", "replace", gw+"/32", "dev", "eth0", "scope", "link")
			ipcmd(pod, "route", "replace", "default", "via", gw, "dev", "eth0")
		}
		if c.name == "host veth down" {
			ipcmd(n.NetNS, "route", "replace", ip+"/32", "dev", host, "scope", "link")
		}
		if _, e := call(t, l, "CHECK", "chk", ns, withPrev); e != nil {
			t.Fatalf("CHECK after restoring the %s: %+v", c.name, e)
		}
	}
}
