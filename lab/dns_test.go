package lab_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
func dnsServer(t *testing.T, netns, ip string, ttl int, records map[string]string) func(map[string]string) {
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
func dig(t *testing.T, l *lab.Lab, pod, server, name string, tcp bool) (status string, addrs []string) {
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
func fqdnCache(t *testing.T, l *lab.Lab, node string) []types.FQDNEntry {
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
