package uninstall

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/filament-net/filament/agent/cniinstall"
	"github.com/filament-net/filament/agent/l7"
	"github.com/filament-net/filament/agent/proxy"
	"github.com/filament-net/filament/internal/testutil"
)

var pool = netip.MustParsePrefix("10.244.0.0/16")

func cidr(s string) *net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return n
}

func TestOurRoute(t *testing.T) {
	for _, c := range []struct {
		r    netlink.Route
		want bool
	}{
		{netlink.Route{Dst: cidr("10.244.1.0/24")}, true},
		{netlink.Route{Dst: cidr("10.244.1.7/32"), Table: unix.RT_TABLE_MAIN}, true},
		{netlink.Route{Dst: cidr("10.0.0.0/8")}, false},     // wider than the pool: not ours
		{netlink.Route{Dst: cidr("192.168.1.0/24")}, false}, // outside
		{netlink.Route{}, false},                            // default route
		{netlink.Route{Dst: cidr("10.244.1.0/24"), Table: 100}, false},
		{netlink.Route{Dst: cidr("0.0.0.0/0"), Table: l7.RouteTable}, true},
	} {
		if got := OurRoute(c.r, pool); got != c.want {
			t.Errorf("OurRoute(%v) = %v, want %v", c.r, got, c.want)
		}
	}
}

func TestOurFilter(t *testing.T) {
	for name, want := range map[string]bool{"from_netdev": true, "from_container:[42]": true, "to_container": true, "cil_from_netdev": false, "": false} {
		if OurFilter(name) != want {
			t.Errorf("OurFilter(%q) != %v", name, want)
		}
	}
}

func TestRunInvalid(t *testing.T) {
	good := Config{BPFRoot: "/sys/fs/bpf", StateDir: "/var/lib/filament", RunDir: "/var/run/filament", ClusterPool: pool,
		CNI: cniinstall.Files{BinDir: "/opt/cni/bin", ConfDir: "/etc/cni/net.d", ConfName: "10-filament.conflist"}}
	for name, edit := range map[string]func(c *Config){
		"relative state dir": func(c *Config) { c.StateDir = "var/lib" },
		"root run dir":       func(c *Config) { c.RunDir = "/" },
		"no pool":            func(c *Config) { c.ClusterPool = netip.Prefix{} },
		"bad CNI conf name":  func(c *Config) { c.CNI.ConfName = "../x.conflist" },
	} {
		c := good
		edit(&c)
		if _, err := Run(c); !errors.Is(err, ErrInvalid) && !errors.Is(err, cniinstall.ErrInvalid) {
			t.Errorf("%s: %v, want an invalid-input error", name, err)
		}
	}
}

// Everything the agent leaves on a node (in a network namespace of the
// test, with a bpffs and CNI directories of its own) goes; what is not
// Filament's stays.
func TestRun(t *testing.T) {
	testutil.InNewNetNS(t)

	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "filament_host"}, PeerName: "filament_net"}))
	must(netlink.LinkAdd(&netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "filament_vxlan"}, FlowBased: true, Port: 8472}))
	must(netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0p"})) // no dummy driver here
	eth0, err := netlink.LinkByName("eth0")
	must(err)
	lo, err := netlink.LinkByName("lo")
	must(err)
	must(netlink.LinkSetUp(eth0))
	must(netlink.LinkSetUp(lo))
	must(netlink.AddrAdd(eth0, &netlink.Addr{IPNet: cidr("192.0.2.1/24")}))
	gw := net.ParseIP("192.0.2.2")
	must(netlink.RouteAdd(&netlink.Route{Dst: cidr("10.244.1.0/24"), Gw: gw, LinkIndex: eth0.Attrs().Index}))
	must(netlink.RouteAdd(&netlink.Route{Dst: cidr("198.51.100.0/24"), Gw: gw, LinkIndex: eth0.Attrs().Index}))
	must(netlink.RouteAdd(&netlink.Route{Dst: cidr("0.0.0.0/0"), LinkIndex: lo.Attrs().Index, Table: l7.RouteTable, Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST}))
	rule := netlink.NewRule()
	mask := uint32(0xffffffff)
	rule.Mark, rule.Mask, rule.Table, rule.Priority, rule.Family = l7.MarkToProxy, &mask, l7.RouteTable, 90, unix.AF_INET
	must(netlink.RuleAdd(rule))
	// A classic tc filter of ours and one of someone else's.
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}})
	if err != nil {
		testutil.SkipMissingFeature(t, "BPF programs", err)
	}
	defer prog.Close()
	must(netlink.QdiscAdd(&netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: eth0.Attrs().Index,
		Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}, QdiscType: "clsact"}))
	for i, name := range []string{"from_netdev", "someone_else"} {
		must(netlink.FilterAdd(&netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{LinkIndex: eth0.Attrs().Index,
			Parent: netlink.HANDLE_MIN_INGRESS, Handle: uint32(i + 1), Priority: uint16(i + 1), Protocol: unix.ETH_P_ALL},
			Fd: prog.FD(), Name: name, DirectAction: true}))
	}

	// bpffs with a pinned map, state and run dirs, CNI files.
	bpf := t.TempDir()
	must(unix.Mount("bpf", bpf, "bpf", 0, ""))
	defer unix.Unmount(bpf, unix.MNT_DETACH)
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	must(err)
	must(os.MkdirAll(filepath.Join(bpf, "filament", "c1", "n1"), 0o700))
	must(m.Pin(filepath.Join(bpf, "filament", "c1", "n1", "m")))
	m.Close()
	keep := filepath.Join(bpf, "not-ours")
	must(os.Mkdir(keep, 0o700))
	host := t.TempDir()
	c := Config{BPFRoot: bpf, StateDir: filepath.Join(host, "state"), RunDir: filepath.Join(host, "run"), ClusterPool: pool,
		CNI: cniinstall.Files{BinDir: filepath.Join(host, "bin"), ConfDir: filepath.Join(host, "net.d"), ConfName: "10-filament.conflist"}}
	for _, d := range []string{c.StateDir, c.RunDir, c.CNI.BinDir, c.CNI.ConfDir} {
		must(os.MkdirAll(d, 0o755))
	}
	plugin, conf := c.CNI.Targets()
	for _, f := range []string{plugin, conf, filepath.Join(c.StateDir, "endpoints.json"), filepath.Join(c.RunDir, "agent.sock"),
		filepath.Join(c.CNI.BinDir, "bridge")} {
		must(os.WriteFile(f, []byte("x"), 0o600))
	}

	// An L7 proxy holding its lock in the agent's state dir (this test
	// binary standing for it).
	proxyDir := filepath.Join(c.StateDir, "proxy")
	must(os.MkdirAll(proxyDir, 0o700))
	exe, err := os.Executable()
	must(err)
	px := exec.Command(exe)
	px.Env = append(os.Environ(), fakeProxyEnv+"="+proxyDir)
	must(px.Start())
	exited := make(chan error, 1)
	go func() { exited <- px.Wait() }()
	defer px.Process.Kill()
	for i := 0; ; i++ {
		if pid, _ := proxy.Holder(proxyDir); pid == px.Process.Pid {
			break
		}
		if i == 100 {
			t.Fatal("the fake proxy did not take its lock")
		}
		time.Sleep(50 * time.Millisecond)
	}

	done, err := Run(c)
	if err != nil {
		t.Fatalf("Run: %v (did %q)", err, done)
	}
	t.Logf("removed: %q", done)
	select {
	case <-exited:
	case <-time.After(15 * time.Second):
		t.Error("the L7 proxy still runs after the uninstall")
	}
	if !slices.Contains(done, "L7 proxy") {
		t.Errorf("the uninstall does not say it stopped the L7 proxy: %q", done)
	}
	for _, d := range Devices {
		if _, err := netlink.LinkByName(d); err == nil {
			t.Errorf("device %s left", d)
		}
	}
	routes, _ := netlink.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	kept := false
	for _, r := range routes {
		if OurRoute(r, pool) {
			t.Errorf("route %v left", r)
		}
		kept = kept || (r.Dst != nil && r.Dst.String() == "198.51.100.0/24")
	}
	if !kept {
		t.Error("the route to 198.51.100.0/24 (not in the pool) was removed")
	}
	rules, _ := netlink.RuleList(unix.AF_INET)
	for _, r := range rules {
		if r.Table == l7.RouteTable {
			t.Errorf("rule %v left", r)
		}
	}
	fs, err := netlink.FilterList(eth0, netlink.HANDLE_MIN_INGRESS)
	must(err)
	if len(fs) != 1 || fs[0].(*netlink.BpfFilter).Name != "someone_else" {
		t.Errorf("filters left on eth0: %v, want someone_else's only", fs)
	}
	for _, p := range []string{filepath.Join(bpf, "filament"), c.StateDir, c.RunDir, plugin, conf} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s left", p)
		}
	}
	for _, p := range []string{keep, filepath.Join(c.CNI.BinDir, "bridge")} {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("%s (not ours) removed: %v", p, err)
		}
	}
	// Idempotent: a second run finds nothing and fails on nothing.
	if done, err := Run(c); err != nil || len(done) != 1 {
		t.Errorf("second run: did %q, err %v; want only the (absent) CNI files", done, err)
	}
}

// fakeProxyEnv makes this test binary stand for an L7 proxy: it takes
// the lock of the state dir the variable names and waits to be stopped.
const fakeProxyEnv = "FILAMENT_FAKE_PROXY_LOCK"

func TestMain(m *testing.M) {
	if dir := os.Getenv(fakeProxyEnv); dir != "" {
		if _, err := proxy.Lock(dir); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		select {}
	}
	os.Exit(m.Run())
}
