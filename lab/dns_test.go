package lab_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/api/types"
	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// dnsPolicy lets app=client look up *.allowed.test (UDP and TCP 53) at
// the app=dns pod and connect on port 80 to the addresses those lookups
// gave; everything else it sends is denied.
const dnsPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-dns}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: dns}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns:
        - matchPattern: "*.allowed.test"
  - toFQDNs:
    - matchPattern: "*.allowed.test"
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
`

// dnsServer runs dnsmasq in the network namespace netns, listening on ip:
// authoritative for the host records given (name=address), with answers'
// TTL ttl seconds; it stops at cleanup. It returns a function that
// replaces the records (dnsmasq started again).
func dnsServer(t testing.TB, netns, ip string, ttl int, records map[string]string) func(map[string]string) {
	t.Helper()
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		t.Skip("dnsmasq is not installed (apt-get install dnsmasq-base; make deps installs it)")
	}
	var cmd *exec.Cmd
	start := func(records map[string]string) {
		argv := []string{"ip", "netns", "exec", netns, "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces",
			"--listen-address=" + ip, fmt.Sprintf("--local-ttl=%d", ttl), "--log-facility=-",
			"--pid-file=" + filepath.Join(t.TempDir(), "dnsmasq.pid"), "--user=root"}
		for name, addr := range records {
			argv = append(argv, "--host-record="+name+","+addr)
		}
		c := exec.Command(argv[0], argv[1:]...)
		c.Stdout, c.Stderr = os.Stderr, os.Stderr
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		cmd = c
	}
	stop := func() {
		if cmd != nil {
			cmd.Process.Kill()
			cmd.Wait()
			cmd = nil
		}
	}
	start(records)
	t.Cleanup(stop)
	return func(records map[string]string) { stop(); start(records) }
}

// dig asks server for name's A record from pod (over TCP with tcp) and
// returns the status (NOERROR, REFUSED, ...) and the addresses.
func dig(t testing.TB, l *lab.Lab, pod, server, name string, tcp bool) (status string, addrs []string) {
	t.Helper()
	argv := []string{"dig", "@" + server, name, "A", "+tries=1", "+time=3", "+nocookie"}
	if tcp {
		argv = append(argv, "+tcp")
	}
	cmd, err := l.PodCommand(pod, argv...)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := cmd.CombinedOutput()
	s := string(out)
	if i := strings.Index(s, "status: "); i >= 0 {
		status = strings.TrimRight(strings.Fields(s[i+len("status: "):])[0], ",")
	} else if strings.Contains(s, "timed out") || strings.Contains(s, "no servers could be reached") {
		status = "TIMEOUT"
	}
	inAnswer := false
	for _, line := range strings.Split(s, "\n") {
		switch {
		case strings.HasPrefix(line, ";; ANSWER SECTION:"):
			inAnswer = true
		case inAnswer && strings.TrimSpace(line) == "":
			inAnswer = false
		case inAnswer:
			if f := strings.Fields(line); len(f) == 5 && f[3] == "A" {
				addrs = append(addrs, f[4])
			}
		}
	}
	return status, addrs
}

// fqdnCache is `filament fqdn cache list -o json` on a node.
func fqdnCache(t testing.TB, l *lab.Lab, node string) []types.FQDNEntry {
	t.Helper()
	out, err := labtest.NodeRun(t, l, node, "filament", "fqdn", "cache", "list", "-o", "json")
	if err != nil {
		t.Fatalf("fqdn cache list: %v: %s", err, out)
	}
	var es []types.FQDNEntry
	if err := json.Unmarshal([]byte(out), &es); err != nil {
		t.Fatalf("fqdn cache list: %v: %s", err, out)
	}
	return es
}

// DNS-aware policy with a real DNS server (dnsmasq, in a pod) and real
// clients (dig, curl) reaching two servers outside the cluster: a lookup
// the DNS rules allow is answered by the server, over UDP and TCP; another
// is answered REFUSED by the proxy; the address an allowed answer gave is
// reachable (toFQDNs) at once, others are not; the node's cache lists the
// name, its address and the endpoint that asked; when the server's
// address for the name changes, the allow follows it, and the old address
// is revoked for new connections once its TTL passed. (A pod's address
// has the pod's identity: toFQDNs, as in Cilium, select what is outside
// the cluster.)
func TestDNSPolicy(t *testing.T) {
	l := labtest.Up(t, 1, 0)
	dnsPod := labtest.Pod(t, l, "n1", "dns", "app=dns")
	labtest.Pod(t, l, "n1", "client", "app=client")
	web1 := labtest.Host(t, l, "web1", "10.0.9.1")
	web2 := labtest.Host(t, l, "web2", "10.0.9.2")
	serveHTTP(t, lab.NetNSPath(web1.NetNS), 80)
	serveHTTP(t, lab.NetNSPath(web2.NetNS), 80)
	const ttl = 3
	setRecords := dnsServer(t, dnsPod.NetNS, dnsPod.IP, ttl, map[string]string{"www.allowed.test": web1.IP, "www.denied.test": web2.IP})
	labtest.ImportPolicy(t, l, "n1", dnsPolicy)

	// Before any lookup, the web pods are not reachable (toFQDNs selects
	// nothing yet).
	eventually(t, "egress enforced: web1 unreachable before a lookup", func() bool {
		return curlCodes(t, l, "client", "http://"+web1.IP+"/") == "000"
	})
	var status string
	var addrs []string
	eventually(t, "allowed lookup answered by dnsmasq through the proxy", func() bool {
		status, addrs = dig(t, l, "client", dnsPod.IP, "www.allowed.test", false)
		return status == "NOERROR"
	})
	if len(addrs) != 1 || addrs[0] != web1.IP {
		t.Fatalf("www.allowed.test: %v, want [%s]", addrs, web1.IP)
	}
	// The answer was held until the address was in the datapath: the
	// first connection right after it succeeds.
	if got := curlCodes(t, l, "client", "http://"+web1.IP+"/"); got != "200" {
		n1, _ := l.Node("n1")
		out, _ := exec.Command("sh", "-c", "tail -30 "+filepath.Join(n1.StateDir, "proxy", "proxy.log")+"; grep -i 'dns\\|fqdn\\|learn' "+n1.LogFile+" | tail -20").CombinedOutput()
		t.Errorf("GET web1 right after the lookup: %q, want 200\n%s", got, out)
	}
	if status, addrs := dig(t, l, "client", dnsPod.IP, "www.allowed.test", true); status != "NOERROR" || len(addrs) != 1 {
		t.Errorf("allowed lookup over TCP: %s %v", status, addrs)
	}
	for _, tcp := range []bool{false, true} {
		if status, addrs := dig(t, l, "client", dnsPod.IP, "www.denied.test", tcp); status != "REFUSED" || len(addrs) != 0 {
			t.Errorf("denied lookup (tcp %v): %s %v, want REFUSED and no address", tcp, status, addrs)
		}
	}
	if got := curlCodes(t, l, "client", "http://"+web2.IP+"/"); got != "000" {
		t.Errorf("GET web2 (no allowed lookup gave its address): %q, want no connection", got)
	}
	found := false
	for _, e := range fqdnCache(t, l, "n1") {
		if e.Name == "www.allowed.test." && e.Addr.String() == web1.IP && len(e.Endpoints) == 1 {
			found = true
		}
		if strings.Contains(e.Name, "denied") {
			t.Errorf("a denied lookup's name is cached: %+v", e)
		}
	}
	if !found {
		t.Errorf("fqdn cache list has no www.allowed.test. -> %s from the client's endpoint: %+v", web1.IP, fqdnCache(t, l, "n1"))
	}
	// The connection's flow carries the name it was looked up as: the
	// Hubble API finds it by --to-fqdn (not only the DNS exchange).
	conns := filamentObserve(t, l, "n1", "--to-fqdn", "www.allowed.test", "--protocol", "tcp", "--from-pod", "default/client")
	if len(conns) == 0 || field(conns[0], "IP", "destination") != web1.IP || field(conns[0], "verdict") != "FORWARDED" {
		t.Errorf("filament observe --to-fqdn www.allowed.test --protocol tcp: %v", conns)
	}
	if hubble := os.Getenv("FILAMENT_HUBBLE"); hubble != "" { // the real CLI too (make test sets it)
		if got := hubbleObserve(t, l, hubble, "n1", "--to-fqdn", "*.allowed.test", "--protocol", "tcp", "--verdict", "FORWARDED"); len(got) == 0 || field(got[0], "IP", "destination") != web1.IP {
			t.Errorf("hubble observe --to-fqdn *.allowed.test --protocol tcp: %v", got)
		}
	}

	// The server moves the name to web2: the allow follows the answers;
	// web1's address is revoked for new connections after its TTL.
	setRecords(map[string]string{"www.allowed.test": web2.IP, "www.denied.test": web1.IP})
	eventually(t, "the new address is answered", func() bool {
		status, addrs = dig(t, l, "client", dnsPod.IP, "www.allowed.test", false)
		return status == "NOERROR" && len(addrs) == 1 && addrs[0] == web2.IP
	})
	if got := curlCodes(t, l, "client", "http://"+web2.IP+"/"); got != "200" {
		t.Errorf("GET web2 right after it was answered: %q, want 200", got)
	}
	deadline := time.Now().Add(ttl*time.Second + 20*time.Second)
	for curlCodes(t, l, "client", "http://"+web1.IP+"/") != "000" {
		if time.Now().After(deadline) {
			t.Fatalf("web1 still reachable %s after its TTL (%ds) passed: cache %+v", 20*time.Second, ttl, fqdnCache(t, l, "n1"))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// A deleted pod's DNS names leave the node's cache (and so the toFQDNs
// selectors) at once, not when their TTL ends: the name another pod also
// asked for stays, listed for that pod only.
func TestDNSForgetsDeletedEndpoint(t *testing.T) {
	l := labtest.Up(t, 1, 0)
	dnsPod := labtest.Pod(t, l, "n1", "dns", "app=dns")
	labtest.Pod(t, l, "n1", "client", "app=client")
	labtest.Pod(t, l, "n1", "other", "app=client")
	dnsServer(t, dnsPod.NetNS, dnsPod.IP, 600, map[string]string{"a.allowed.test": "10.0.9.1", "b.allowed.test": "10.0.9.2"})
	labtest.ImportPolicy(t, l, "n1", dnsPolicy)
	for _, q := range []struct{ pod, name string }{{"client", "a.allowed.test"}, {"client", "b.allowed.test"}, {"other", "b.allowed.test"}} {
		eventually(t, q.pod+" resolves "+q.name+" through the proxy", func() bool {
			status, _ := dig(t, l, q.pod, dnsPod.IP, q.name, false)
			return status == "NOERROR"
		})
	}
	eps := func() map[string][]uint16 {
		m := map[string][]uint16{}
		for _, e := range fqdnCache(t, l, "n1") {
			m[e.Name] = append(m[e.Name], e.Endpoints...)
		}
		return m
	}
	var before map[string][]uint16
	eventually(t, "both names cached, b for two endpoints", func() bool {
		before = eps()
		return len(before["a.allowed.test."]) == 1 && len(before["b.allowed.test."]) == 2
	})
	gone := before["a.allowed.test."][0] // the client's endpoint
	if err := l.DeletePod("client"); err != nil {
		t.Fatal(err)
	}
	var after map[string][]uint16
	eventuallyWithin(t, 5*time.Second, "the deleted pod's names forgotten well before their 600 s TTL", func() bool {
		after = eps()
		_, a := after["a.allowed.test."]
		return !a && len(after["b.allowed.test."]) == 1
	})
	if b := after["b.allowed.test."]; b[0] == gone {
		t.Errorf("b.allowed.test. left for the deleted endpoint %d, not the other pod's", gone)
	}
}

// dnsWebLab is one node with dnsmasq in the app=dns pod answering
// www.allowed.test with the address of an HTTP server outside the
// cluster (web, 10.0.9.1; TTL ttl seconds), an app=client pod of each
// name given, and dnsPolicy.
func dnsWebLab(t *testing.T, ttl int, clients ...string) (*lab.Lab, *lab.Pod, *lab.Host) {
	t.Helper()
	l := labtest.Up(t, 1, 0)
	dnsPod := labtest.Pod(t, l, "n1", "dns", "app=dns")
	for _, c := range clients {
		labtest.Pod(t, l, "n1", c, "app=client")
	}
	web := labtest.Host(t, l, "web", "10.0.9.1")
	serveHTTP(t, lab.NetNSPath(web.NetNS), 80)
	dnsServer(t, dnsPod.NetNS, dnsPod.IP, ttl, map[string]string{"www.allowed.test": web.IP})
	labtest.ImportPolicy(t, l, "n1", dnsPolicy)
	return l, dnsPod, web
}

// An answer allows its address only to the pod that asked: a twin pod
// under the same policy that never looked the name up cannot connect to
// the address (one pod's lookups, from a server it may choose, must not
// widen another's egress), until it asks itself.
func TestDNSAnswerAllowsOnlyTheAsker(t *testing.T) {
	l, dnsPod, web := dnsWebLab(t, 600, "client", "twin")
	eventually(t, "the client resolves www.allowed.test through the proxy", func() bool {
		status, addrs := dig(t, l, "client", dnsPod.IP, "www.allowed.test", false)
		return status == "NOERROR" && len(addrs) == 1 && addrs[0] == web.IP
	})
	if got := curlCodes(t, l, "client", "http://"+web.IP+"/"); got != "200" {
		t.Fatalf("GET %s from the pod that looked it up: %q, want 200", web.IP, got)
	}
	if got := curlCodes(t, l, "twin", "http://"+web.IP+"/"); got != "000" {
		t.Errorf("GET %s from a pod that never looked it up: %q, want no connection", web.IP, got)
	}
	if status, addrs := dig(t, l, "twin", dnsPod.IP, "www.allowed.test", false); status != "NOERROR" || len(addrs) != 1 {
		t.Fatalf("the twin's own lookup: %s %v", status, addrs)
	}
	if got := curlCodes(t, l, "twin", "http://"+web.IP+"/"); got != "200" {
		t.Errorf("GET %s from the twin right after its own lookup: %q, want 200", web.IP, got)
	}
}

// A DNS server a pod may reach (one it runs, or a zone mapping names to
// any address, as nip.io does) answered an allowed name with the cloud
// metadata address or loopback, and toFQDNs allowed it to the pod. Such
// addresses are never learned: the answer reaches the pod, no allow.
func TestDNSSpecialAddressesNotLearned(t *testing.T) {
	l := labtest.Up(t, 1, 0)
	dnsPod := labtest.Pod(t, l, "n1", "dns", "app=dns")
	labtest.Pod(t, l, "n1", "client", "app=client")
	web := labtest.Host(t, l, "web", "10.0.9.1")
	special := map[string]string{"meta.allowed.test": "169.254.169.254", "lo.allowed.test": "127.0.0.1",
		"zero.allowed.test": "0.0.0.0", "mcast.allowed.test": "224.0.0.251", "bcast.allowed.test": "255.255.255.255"}
	records := map[string]string{"www.allowed.test": web.IP}
	for n, a := range special {
		records[n] = a
	}
	dnsServer(t, dnsPod.NetNS, dnsPod.IP, 600, records)
	labtest.ImportPolicy(t, l, "n1", dnsPolicy)
	eventually(t, "the client resolves www.allowed.test through the proxy", func() bool {
		status, addrs := dig(t, l, "client", dnsPod.IP, "www.allowed.test", false)
		return status == "NOERROR" && len(addrs) == 1 && addrs[0] == web.IP
	})
	for name, addr := range special {
		if status, addrs := dig(t, l, "client", dnsPod.IP, name, false); status != "NOERROR" || len(addrs) != 1 || addrs[0] != addr {
			t.Errorf("%s: %s %v, want the server's answer %s passed on", name, status, addrs, addr)
		}
	}
	learned := map[string]bool{}
	for _, e := range fqdnCache(t, l, "n1") {
		learned[e.Addr.String()] = true
	}
	if !learned[web.IP] {
		t.Fatalf("www.allowed.test's address not learned: %v", learned)
	}
	for name, addr := range special {
		if learned[addr] {
			t.Errorf("%s's address %s was learned (toFQDNs allows it to the pod)", name, addr)
		}
	}
}

// A connection opened while its address was allowed is not cut when the
// name's TTL passes: the address stays allowed while it is open, for the
// pod whose connection it is only. The twin pod, which looked the name up
// too but has no connection, loses the address at the TTL; once the
// connection ends, the client loses it as well.
func TestDNSConnectionOutlivesTTL(t *testing.T) {
	const ttl = 3
	l, dnsPod, web := dnsWebLab(t, ttl, "client", "twin")
	url := "http://" + web.IP + "/"
	for _, pod := range []string{"client", "twin"} {
		eventually(t, pod+" resolves www.allowed.test through the proxy", func() bool {
			status, addrs := dig(t, l, pod, dnsPod.IP, "www.allowed.test", false)
			return status == "NOERROR" && len(addrs) == 1 && addrs[0] == web.IP
		})
		if got := curlCodes(t, l, pod, url); got != "200" {
			t.Fatalf("GET %s from %s right after its lookup: %q", url, pod, got)
		}
	}
	// The client keeps one HTTP/1.1 connection busy across the TTL: a
	// request every 3 s (the server closes a connection idle for 10 s),
	// each answered on the same connection (bash's /dev/tcp: nothing but
	// the connection).
	const requests, every = 8, 3
	cmd, err := l.PodCommand("client", "bash", "-c", fmt.Sprintf(
		`exec 3<>/dev/tcp/%s/80 || exit 1; echo open; for i in $(seq %d); do printf 'GET / HTTP/1.1\r\nHost: web\r\n\r\n' >&3; sleep %d; done; timeout 3 cat <&3; exit 0`,
		web.IP, requests, every))
	if err != nil {
		t.Fatal(err)
	}
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	eventuallyWithin(t, 5*time.Second, "the client's connection open", func() bool { return strings.Contains(out.String(), "open") })
	// The twin's allow goes at the TTL (once its own closed connections
	// are gone from conntrack, 10 s after their FINs), though the client's
	// connection to the same address is open (before 2026-12-02 it kept
	// the address for every pod that had asked).
	eventuallyWithin(t, ttl*time.Second+15*time.Second, "the twin's allow revoked at the TTL", func() bool {
		return curlCodes(t, l, "twin", "--connect-timeout", "1", url) == "000"
	})
	if d := time.Since(start); d > requests*every*time.Second {
		t.Fatalf("the twin's allow lasted %s, past the client's connection (%d s): the test proves nothing", d, requests*every)
	}
	err = <-done
	if got := strings.Count(out.String(), "HTTP/1.1 200 "); err != nil || got != requests {
		t.Fatalf("the client's connection across the TTL: %d of %d requests answered (%v)\n%s", got, requests, err, out.String())
	}
	eventuallyWithin(t, 25*time.Second, "the client's allow revoked once its connection ended", func() bool {
		return curlCodes(t, l, "client", "--connect-timeout", "1", url) == "000"
	})
}

// dnsLoad is one dnsperf run's figures.
type dnsLoad struct {
	qps            float64
	avgMs, maxMs   float64
	sent, lost     int
	rcodes, output string
}

// dnsperfRun runs dnsperf in pod against server with the query file qf
// for secs seconds (at most qps per second when qps > 0).
func dnsperfRun(b testing.TB, l *lab.Lab, pod, server, qf string, secs, qps int) dnsLoad {
	b.Helper()
	if _, err := exec.LookPath("dnsperf"); err != nil {
		b.Skip("dnsperf is not installed (apt-get install dnsperf; make deps installs it)")
	}
	argv := []string{"dnsperf", "-s", server, "-d", qf, "-l", strconv.Itoa(secs), "-t", "2", "-c", "8", "-T", "2"}
	if qps > 0 {
		argv = append(argv, "-Q", strconv.Itoa(qps))
	}
	cmd, err := l.PodCommand(pod, argv...)
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("dnsperf: %v: %s", err, out)
	}
	r := dnsLoad{output: string(out)}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[0] == "Queries" && f[1] == "sent:":
			r.sent, _ = strconv.Atoi(f[2])
		case len(f) >= 3 && f[0] == "Queries" && f[1] == "lost:":
			r.lost, _ = strconv.Atoi(f[2])
		case len(f) >= 2 && f[0] == "Response" && f[1] == "codes:":
			r.rcodes = strings.Join(f[2:], " ")
		case len(f) >= 4 && f[0] == "Queries" && f[1] == "per" && f[2] == "second:":
			r.qps, _ = strconv.ParseFloat(f[3], 64)
		case len(f) >= 7 && f[0] == "Average" && f[1] == "Latency":
			// Average Latency (s):  0.000421 (min 0.000051, max 0.006128)
			avg, _ := strconv.ParseFloat(f[3], 64)
			mx, _ := strconv.ParseFloat(strings.TrimRight(f[7], ")"), 64)
			r.avgMs, r.maxMs = 1000*avg, 1000*mx
		}
	}
	if r.sent == 0 {
		b.Fatalf("dnsperf sent nothing: %s", out)
	}
	return r
}

// The agent restarts under a steady DNS load (dnsperf, 200 queries/s):
// the proxy, a process of its own, keeps answering (no query lost, every
// answer NOERROR), and the names learned before the restart are still in
// the cache and still allow their addresses afterwards (persisted).
func TestDNSAcrossAgentRestart(t *testing.T) {
	l, dnsPod, web := dnsWebLab(t, 600, "client")
	eventually(t, "the lookup is answered through the proxy and its address allowed", func() bool {
		status, _ := dig(t, l, "client", dnsPod.IP, "www.allowed.test", false)
		return status == "NOERROR" && curlCodes(t, l, "client", "http://"+web.IP+"/") == "200"
	})

	qf := filepath.Join(t.TempDir(), "queries")
	if err := os.WriteFile(qf, []byte("www.allowed.test A\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan dnsLoad, 1)
	go func() { done <- dnsperfRun(t, l, "client", dnsPod.IP, qf, 8, 200) }()
	time.Sleep(2 * time.Second)
	if err := l.StopAgent("n1"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // no agent at all for a second
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := l.StartAgent(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.lost > 0 || r.rcodes != fmt.Sprintf("NOERROR %d (100.00%%)", r.sent) {
		t.Errorf("across the agent restart: %d of %d queries lost, response codes %q\n%s", r.lost, r.sent, r.rcodes, r.output)
	}
	t.Logf("across the agent restart: %d queries sent, %d lost, %s", r.sent, r.lost, r.rcodes)
	found := false
	for _, e := range fqdnCache(t, l, "n1") {
		found = found || e.Name == "www.allowed.test." && e.Addr.String() == web.IP
	}
	if !found {
		t.Errorf("the learned name is not in the cache after the restart: %+v", fqdnCache(t, l, "n1"))
	}
	if got := curlCodes(t, l, "client", "http://"+web.IP+"/"); got != "200" {
		t.Errorf("GET of the learned address after the restart: %q, want 200", got)
	}
}

// DNS servers elsewhere: a client pod on n2 asks a DNS pod on n1 (across
// the tunnel) and a DNS server outside the cluster (a lab host, allowed
// by toCIDR); each allowed answer's address is reachable at once, a
// denied lookup is REFUSED by n2's proxy whichever server it was for.
func TestDNSPolicyRemoteServers(t *testing.T) {
	l := labtest.Up(t, 2, 0)
	dnsPod := labtest.Pod(t, l, "n1", "dns", "app=dns")
	labtest.Pod(t, l, "n2", "client", "app=client")
	outside := labtest.Host(t, l, "ns", "10.0.8.53")
	web1 := labtest.Host(t, l, "web1", "10.0.9.1")
	web2 := labtest.Host(t, l, "web2", "10.0.9.2")
	serveHTTP(t, lab.NetNSPath(web1.NetNS), 80)
	serveHTTP(t, lab.NetNSPath(web2.NetNS), 80)
	dnsServer(t, dnsPod.NetNS, dnsPod.IP, 300, map[string]string{"one.allowed.test": web1.IP, "x.denied.test": web1.IP})
	dnsServer(t, outside.NetNS, outside.IP, 300, map[string]string{"two.allowed.test": web2.IP, "y.denied.test": web2.IP})
	labtest.ImportPolicy(t, l, "n1", strings.Replace(dnsPolicy, "  - toEndpoints: [{matchLabels: {app: dns}}]\n",
		"  - toEndpoints: [{matchLabels: {app: dns}}]\n    toCIDR: [\""+outside.IP+"/32\"]\n", 1))
	for _, c := range []struct{ server, allowed, web, denied string }{
		{dnsPod.IP, "one.allowed.test", web1.IP, "x.denied.test"},
		{outside.IP, "two.allowed.test", web2.IP, "y.denied.test"},
	} {
		eventually(t, c.allowed+" answered by "+c.server+" through n2's proxy", func() bool {
			status, addrs := dig(t, l, "client", c.server, c.allowed, false)
			return status == "NOERROR" && len(addrs) == 1 && addrs[0] == c.web
		})
		if got := curlCodes(t, l, "client", "http://"+c.web+"/"); got != "200" {
			t.Errorf("GET %s right after %s was answered by %s: %q, want 200", c.web, c.allowed, c.server, got)
		}
		if status, _ := dig(t, l, "client", c.server, c.denied, true); status != "REFUSED" {
			t.Errorf("%s at %s over TCP: %s, want REFUSED", c.denied, c.server, status)
		}
	}
}

// syncBuffer is a buffer a command writes while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
