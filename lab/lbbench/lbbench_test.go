package lbbench

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/filament-net/filament/internal/testutil"
)

var benchServices = flag.Int("lbbench.services", 10000, "services (of 2 backends each) BenchmarkKubeProxyRulesLoad loads")

var (
	svcRuleRe = regexp.MustCompile(`-d (\S+)/32 -p tcp -m tcp --dport (\d+) -j (KUBE-SVC-[A-Z2-7]{16})$`)
	jumpRe    = regexp.MustCompile(`^(?:-m comment --comment "[^"]*" )?(?:-m statistic --mode random --probability (\S+) )?-j (KUBE-SEP-[A-Z2-7]{16})$`)
)

// parsedRules is an iptables-restore input split up by chain.
type parsedRules struct {
	declared map[string]int      // chain -> times declared
	rules    map[string][]string // chain -> rule bodies after "-A chain ", in order
}

func parseRules(t *testing.T, rules string) parsedRules {
	t.Helper()
	p := parsedRules{declared: map[string]int{}, rules: map[string][]string{}}
	for _, l := range strings.Split(strings.TrimSuffix(rules, "\n"), "\n") {
		switch {
		case strings.HasPrefix(l, ":"):
			p.declared[strings.Fields(l)[0][1:]]++
		case strings.HasPrefix(l, "-A "):
			chain, body, _ := strings.Cut(l[3:], " ")
			p.rules[chain] = append(p.rules[chain], body)
		case l == "*nat", l == "COMMIT", strings.HasPrefix(l, "#"):
		default:
			t.Errorf("unexpected line %q", l)
		}
	}
	for c, n := range p.declared {
		if n != 1 {
			t.Errorf("chain %s declared %d times", c, n)
		}
	}
	for c, rs := range p.rules {
		if p.declared[c] == 0 {
			t.Errorf("rules for undeclared chain %s", c)
		}
		for _, r := range rs {
			if i := strings.Index(r, "-j KUBE-"); i >= 0 {
				target := strings.Fields(r[i+3:])[0]
				if p.declared[target] == 0 {
					t.Errorf("%s jumps to undeclared chain %s", c, target)
				}
			}
		}
	}
	return p
}

func mustAP(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func TestKubeProxyRules(t *testing.T) {
	svcs := []Service{
		{VIP: netip.MustParseAddr("10.96.0.10"), Port: 53, Backends: []netip.AddrPort{mustAP("10.244.0.5:53")}},
		{VIP: netip.MustParseAddr("10.96.0.20"), Port: 80, Backends: []netip.AddrPort{
			mustAP("10.244.1.1:8080"), mustAP("10.244.1.2:8080"), mustAP("10.244.1.3:8080"),
		}},
	}
	rules := KubeProxyRules(svcs)
	if again := KubeProxyRules(svcs); again != rules {
		t.Fatal("KubeProxyRules is not deterministic")
	}
	if !strings.HasPrefix(rules, "*nat\n") || !strings.HasSuffix(rules, "\nCOMMIT\n") {
		t.Fatalf("not a complete nat table:\n%s", rules)
	}
	p := parseRules(t, rules)
	for _, c := range []string{"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING", "KUBE-SERVICES", "KUBE-MARK-MASQ", "KUBE-POSTROUTING"} {
		if p.declared[c] != 1 {
			t.Errorf("chain %s not declared", c)
		}
	}
	for _, c := range []string{"OUTPUT", "PREROUTING"} {
		if len(p.rules[c]) != 1 || !strings.HasSuffix(p.rules[c][0], "-j KUBE-SERVICES") {
			t.Errorf("%s does not jump to KUBE-SERVICES: %q", c, p.rules[c])
		}
	}
	if got := p.rules["KUBE-MARK-MASQ"]; len(got) != 1 || got[0] != "-j MARK --or-mark 0x4000" {
		t.Errorf("KUBE-MARK-MASQ = %q", got)
	}

	svcChain := map[netip.AddrPort]string{}
	for _, r := range p.rules["KUBE-SERVICES"] {
		m := svcRuleRe.FindStringSubmatch(r)
		if m == nil {
			t.Errorf("KUBE-SERVICES rule not kube-proxy shaped: %q", r)
			continue
		}
		svcChain[mustAP(m[1]+":"+m[2])] = m[3]
	}
	if len(svcChain) != 2 || svcChain[mustAP("10.96.0.10:53")] == svcChain[mustAP("10.96.0.20:80")] {
		t.Fatalf("want two distinct service chains, got %v", svcChain)
	}

	wantProb := map[int][]string{1: {""}, 3: {"0.3333333333", "0.5000000000", ""}}
	seps := map[string]bool{}
	for _, s := range svcs {
		chain := svcChain[netip.AddrPortFrom(s.VIP, s.Port)]
		jumps := p.rules[chain]
		if len(jumps) != len(s.Backends) {
			t.Fatalf("%s: %d rules for %d backends: %q", chain, len(jumps), len(s.Backends), jumps)
		}
		for i, j := range jumps {
			m := jumpRe.FindStringSubmatch(j)
			if m == nil {
				t.Fatalf("%s rule %d not kube-proxy shaped: %q", chain, i, j)
			}
			if m[1] != wantProb[len(s.Backends)][i] {
				t.Errorf("%s rule %d: probability %q, want %q", chain, i, m[1], wantProb[len(s.Backends)][i])
			}
			sep := m[2]
			if seps[sep] {
				t.Errorf("endpoint chain %s used twice", sep)
			}
			seps[sep] = true
			b := s.Backends[i]
			want := []string{
				"-m comment --comment " + netip.AddrPortFrom(s.VIP, s.Port).String() + " -s " + b.Addr().String() + "/32 -j KUBE-MARK-MASQ",
				"-m comment --comment " + netip.AddrPortFrom(s.VIP, s.Port).String() + " -p tcp -m tcp -j DNAT --to-destination " + b.String(),
			}
			if got := p.rules[sep]; len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
				t.Errorf("%s = %q, want %q", sep, got, want)
			}
		}
	}
	if len(seps) != 4 {
		t.Errorf("want 4 endpoint chains, got %d", len(seps))
	}

	// A service's chains depend on that service only, as kube-proxy's hashes.
	alone := KubeProxyRules(svcs[1:])
	if c := svcChain[mustAP("10.96.0.20:80")]; !strings.Contains(alone, ":"+c+" ") {
		t.Errorf("chain %s of 10.96.0.20:80 changes with the other services", c)
	}
}

func TestKubeProxyRulesEdgeCases(t *testing.T) {
	vip := netip.MustParseAddr("10.96.0.1")
	be := []netip.AddrPort{mustAP("10.244.0.1:80")}
	rules := KubeProxyRules([]Service{
		{VIP: vip, Port: 80, Backends: be},
		{VIP: vip, Port: 80, Backends: append(be, be[0])}, // duplicate service and endpoint
		{VIP: netip.MustParseAddr("fd00::1"), Port: 80, Backends: be},
		{VIP: netip.MustParseAddr("10.96.0.2"), Port: 80},
		{VIP: netip.MustParseAddr("10.96.0.3"), Port: 80, Backends: []netip.AddrPort{mustAP("[fd00::2]:80")}},
	})
	p := parseRules(t, rules) // checks uniqueness of every chain
	if n := len(p.rules["KUBE-SERVICES"]); n != 2 {
		t.Errorf("want 2 service rules, got %d:\n%s", n, rules)
	}
	for _, want := range []string{
		"# lbbench: skipped service [fd00::1]:80: VIP is not IPv4\n",
		"# lbbench: skipped service 10.96.0.2:80: no backends\n",
		"# lbbench: skipped service 10.96.0.3:80: backend [fd00::2]:80 is not IPv4\n",
	} {
		if !strings.Contains(rules, want) {
			t.Errorf("missing %q in\n%s", want, rules)
		}
	}

	// Above 1000 endpoints the per-endpoint rules lose their comments.
	big := KubeProxyRules(synthServices(501, 2))
	p = parseRules(t, big)
	for c, rs := range p.rules {
		if strings.HasPrefix(c, "KUBE-SEP-") || strings.HasPrefix(c, "KUBE-SVC-") {
			for _, r := range rs {
				if strings.Contains(r, "--comment") {
					t.Fatalf("large cluster: comment in %s: %q", c, r)
				}
			}
		}
	}
	if n := len(p.rules["KUBE-SERVICES"]); n != 501 {
		t.Errorf("want 501 service rules, got %d", n)
	}
}

func TestPercentile(t *testing.T) {
	var lat []time.Duration
	for i := 1; i <= 100; i++ {
		lat = append(lat, time.Duration(i))
	}
	if p := percentile(lat, 0.5); p != 50 {
		t.Errorf("p50 = %d", p)
	}
	if p := percentile(lat, 0.99); p != 99 {
		t.Errorf("p99 = %d", p)
	}
	if p := percentile(lat[:1], 0.99); p != 1 {
		t.Errorf("p99 of one = %d", p)
	}
	if p := percentile(nil, 0.5); p != 0 {
		t.Errorf("p50 of none = %d", p)
	}
}

// synthServices makes n services 10.96.x.y:80, each with backends
// endpoints 10.128.x.y:8080 (distinct over all services).
func synthServices(n, backends int) []Service {
	ip := func(base [4]byte, off uint32) netip.Addr {
		u := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
		u += off
		return netip.AddrFrom4([4]byte{byte(u >> 24), byte(u >> 16), byte(u >> 8), byte(u)})
	}
	svcs := make([]Service, n)
	for i := range svcs {
		svcs[i] = Service{VIP: ip([4]byte{10, 96, 0, 0}, uint32(i)+1), Port: 80}
		for j := range backends {
			svcs[i].Backends = append(svcs[i].Backends,
				netip.AddrPortFrom(ip([4]byte{10, 128, 0, 0}, uint32(i*backends+j)+1), 8080))
		}
	}
	return svcs
}

type testNS struct{ name, path string }

// addNetns creates the named network namespace /var/run/netns/<prefix>-<rand>.
func addNetns(prefix string) (testNS, func() error, error) {
	var r [4]byte
	if _, err := rand.Read(r[:]); err != nil {
		return testNS{}, nil, err
	}
	n := testNS{name: prefix + "-" + hex.EncodeToString(r[:])}
	n.path = "/var/run/netns/" + n.name
	if out, err := exec.Command("ip", "netns", "add", n.name).CombinedOutput(); err != nil {
		return testNS{}, nil, fmt.Errorf("ip netns add %s: %v: %s", n.name, err, bytes.TrimSpace(out))
	}
	del := func() error {
		if out, err := exec.Command("ip", "netns", "del", n.name).CombinedOutput(); err != nil {
			return fmt.Errorf("ip netns del %s: %v: %s", n.name, err, bytes.TrimSpace(out))
		}
		return nil
	}
	return n, del, nil
}

// newNetns is addNetns removed at t's cleanup.
func newNetns(t testing.TB, prefix string) testNS {
	t.Helper()
	n, del, err := addNetns(prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := del(); err != nil {
			t.Error(err)
		}
	})
	return n
}

// wire joins client (192.0.2.1/24, default route via the server) and server
// (192.0.2.2/24) with a veth pair created inside them (it never exists in
// the test's own namespace and goes away with them), loopback up in both.
func wire(t *testing.T, client, server testNS) {
	t.Helper()
	cns, err := netns.GetFromPath(client.path)
	if err != nil {
		t.Fatal(err)
	}
	defer cns.Close()
	sns, err := netns.GetFromPath(server.path)
	if err != nil {
		t.Fatal(err)
	}
	defer sns.Close()
	ch, err := netlink.NewHandleAt(cns)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	sh, err := netlink.NewHandleAt(sns)
	if err != nil {
		t.Fatal(err)
	}
	defer sh.Close()

	la := netlink.NewLinkAttrs()
	la.Name = "lbb0"
	if err := ch.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "lbb1", PeerNamespace: netlink.NsFd(int(sns))}); err != nil {
		t.Fatalf("veth: %v", err)
	}
	setup := func(h *netlink.Handle, ifname, cidr string) netlink.Link {
		lo, err := h.LinkByName("lo")
		if err == nil {
			err = h.LinkSetUp(lo)
		}
		if err != nil {
			t.Fatalf("lo up: %v", err)
		}
		l, err := h.LinkByName(ifname)
		if err != nil {
			t.Fatal(err)
		}
		a, err := netlink.ParseAddr(cidr)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.AddrAdd(l, a); err != nil {
			t.Fatalf("%s %s: %v", ifname, cidr, err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatalf("%s up: %v", ifname, err)
		}
		return l
	}
	cl := setup(ch, "lbb0", "192.0.2.1/24")
	setup(sh, "lbb1", "192.0.2.2/24")
	// Locally generated packets are routed before OUTPUT's DNAT, so the VIP
	// needs a route, as on any node.
	if err := ch.RouteAdd(&netlink.Route{LinkIndex: cl.Attrs().Index, Gw: net.ParseIP("192.0.2.2")}); err != nil {
		t.Fatalf("default route: %v", err)
	}
}

// saveNat returns iptables-save -t nat run inside n.
func saveNat(t *testing.T, n testNS, legacy bool) string {
	t.Helper()
	bin, err := restoreBinary(legacy)
	if err != nil {
		t.Fatal(err)
	}
	bin = strings.TrimSuffix(bin, "-restore") + "-save"
	var out []byte
	err = ns.WithNetNSPath(n.path, func(ns.NetNS) error {
		var err error
		out, err = exec.Command(bin, "-t", "nat").CombinedOutput()
		return err
	})
	if err != nil {
		t.Fatalf("%s: %v: %s", bin, err, out)
	}
	return string(out)
}

var modes = []struct {
	name   string
	legacy bool
}{{"nft", false}, {"legacy", true}}

// skipMissingBackend skips when the iptables backend's restore binary is
// absent, or the kernel cannot do the legacy nat table (per Install's error).
func skipMissingBackend(t testing.TB, legacy bool, installErr error) {
	t.Helper()
	if _, err := restoreBinary(legacy); err != nil {
		t.Skipf("skipped: %v", err)
	}
	if legacy && installErr != nil && (strings.Contains(installErr.Error(), "Table does not exist") ||
		strings.Contains(installErr.Error(), "can't initialize iptables table")) {
		testutil.SkipMissingFeature(t, "iptables legacy nat (ip_tables, iptable_nat)", installErr)
	}
}

func TestKubeProxyBaseline(t *testing.T) {
	testutil.RequireRoot(t)
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) { testBaseline(t, m.legacy) })
	}
}

func testBaseline(t *testing.T, legacy bool) {
	skipMissingBackend(t, legacy, nil)
	client := newNetns(t, "lbb-c")
	server := newNetns(t, "lbb-s")
	wire(t, client, server)

	backends := []netip.AddrPort{mustAP("192.0.2.2:8080"), mustAP("192.0.2.2:8081")}
	for i, reply := range []string{"a", "b"} {
		stop, err := Serve(server.path, backends[i], reply)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
	}
	vip := mustAP("10.96.0.10:80")
	rules := KubeProxyRules([]Service{{VIP: vip.Addr(), Port: vip.Port(), Backends: backends}})
	if err := Install(client.path, rules, legacy); err != nil {
		skipMissingBackend(t, legacy, err)
		t.Fatal(err)
	}
	if saved := saveNat(t, client, legacy); !strings.Contains(saved, "--to-destination 192.0.2.2:8081") ||
		!strings.Contains(saved, "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES") {
		t.Fatalf("rules not in the client namespace:\n%s", saved)
	}

	answers := map[string]int{}
	for range 40 {
		who, err := WhoAnswers(client.path, vip)
		if err != nil {
			t.Fatal(err)
		}
		answers[who]++
	}
	t.Logf("answers over 40 connects to %s: %v", vip, answers)
	if answers["a"] == 0 || answers["b"] == 0 || answers["a"]+answers["b"] != 40 {
		t.Errorf("want both backends among 40 answers, got %v", answers)
	}

	for _, workers := range []int{1, 4} {
		res, err := MeasureConnects(client.path, []netip.AddrPort{vip}, time.Second, workers)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("workers=%d: %d connects (%.0f/s), %d errors, p50 %v, p99 %v",
			workers, res.Connects, res.Rate, res.Errors, res.P50, res.P99)
		if res.Connects == 0 || res.Errors != 0 {
			t.Errorf("workers=%d: want connects and no errors, got %+v", workers, res)
		}
	}

	if err := Flush(client.path, legacy); err != nil {
		t.Fatal(err)
	}
	if saved := saveNat(t, client, legacy); strings.Contains(saved, "KUBE-") {
		t.Fatalf("rules left after Flush:\n%s", saved)
	}
	if who, err := WhoAnswers(client.path, vip); err == nil {
		t.Errorf("after Flush %s still answers (%q)", vip, who)
	}
	if who, err := WhoAnswers(client.path, backends[0]); err != nil || who != "a" {
		t.Errorf("backend %s directly: %q, %v", backends[0], who, err)
	}
}

func TestMeasureConnectsArgs(t *testing.T) {
	if _, err := MeasureConnects("/proc/self/ns/net", nil, time.Second, 1); err == nil {
		t.Error("no targets: want an error")
	}
	if _, err := MeasureConnects("/proc/self/ns/net", []netip.AddrPort{mustAP("127.0.0.1:1")}, 0, 1); err == nil {
		t.Error("zero duration: want an error")
	}
	if _, err := MeasureConnects("/nonexistent", []netip.AddrPort{mustAP("127.0.0.1:1")}, time.Second, 1); err == nil {
		t.Error("bad netns: want an error")
	}
}

// BenchmarkKubeProxyRulesLoad times loading the kube-proxy-shaped nat table
// for -lbbench.services services (default 10,000) of 2 backends each into a
// fresh network namespace, per iptables backend.
func BenchmarkKubeProxyRulesLoad(b *testing.B) {
	testutil.RequireRoot(b)
	n := *benchServices
	rules := KubeProxyRules(synthServices(n, 2))
	b.Logf("%d services: %d rules, %d chains, %.1f MiB of iptables-restore input",
		n, strings.Count(rules, "\n-A "), strings.Count(rules, "\n:"), float64(len(rules))/(1<<20))
	for _, m := range modes {
		b.Run(m.name, func(b *testing.B) {
			skipMissingBackend(b, m.legacy, nil)
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				fresh, del, err := addNetns("lbb-b")
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				err = Install(fresh.path, rules, m.legacy)
				b.StopTimer()
				if derr := del(); derr != nil {
					b.Error(derr)
				}
				if err != nil {
					skipMissingBackend(b, m.legacy, err)
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(n), "services")
		})
	}
}
