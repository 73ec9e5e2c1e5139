package lab_test

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/filament-net/filament/bpf"
	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// remoteNodePort is a NodePort service shop/name (clusterIP, one port of
// protocol proto: port to targetPort, nodePort) whose one backend is ip on
// n2.
func remoteNodePort(name, clusterIP, proto string, port, targetPort, nodePort int, ip string) string {
	return fmt.Sprintf(`apiVersion: filament.io/v1
kind: Service
metadata: {name: %s, namespace: shop}
spec:
  type: NodePort
  clusterIP: %s
  ports:
  - {name: p, port: %d, targetPort: %d, nodePort: %d, protocol: %s}
backends:
- {ip: %s, node: n2, state: active}
`, name, clusterIP, port, targetPort, nodePort, proto, ip)
}

// upsertNodePort upserts a service of one backend (remoteNodePort) through
// n1 and waits until each of nodes serves it.
func upsertNodePort(t *testing.T, l *lab.Lab, doc string, nodes ...string) {
	t.Helper()
	labtest.MustUpsertService(t, l, "n1", doc)
	for _, on := range nodes {
		eventually(t, "service on "+on, func() bool {
			ss := labtest.Services(t, l, on)
			return len(ss) == 1 && len(ss[0].Frontends) > 0 && len(ss[0].Frontends[0].Backends) == 1
		})
	}
}

// nodePortModes are the lab's ways between nodes that NodePort tests run
// in: tunnel and native routing, and WireGuard (strict) over the tunnel.
var nodePortModes = []struct {
	name, routing string
	args          []string
}{
	{"tunnel", "tunnel", nil},
	{"native", "native", nil},
	{"wireguard", "tunnel", []string{"--encryption", "wireguard", "--encryption-strict"}},
}

// bulkConn serves one connection of TestNodePortRealTCPFlowsClose's
// clients after its first line: "get N" sends N bytes and closes; "put"
// reads to the client's FIN, answers with the count and closes; "abort N"
// sends N bytes and resets the connection after the client's next line;
// "stream" sends until the client goes away.
func bulkConn(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		return
	}
	cmd, arg, _ := strings.Cut(strings.TrimSpace(line), " ")
	n, _ := strconv.Atoi(arg)
	chunk := make([]byte, 64<<10)
	send := func(n int) error {
		for n > 0 {
			m := min(n, len(chunk))
			if _, err := c.Write(chunk[:m]); err != nil {
				return err
			}
			n -= m
		}
		return nil
	}
	switch cmd {
	case "get":
		send(n)
	case "put":
		got, _ := io.Copy(io.Discard, r)
		fmt.Fprintln(c, got)
	case "abort":
		// Reset once the client has read it all and says so (resetting
		// earlier could close the flow before the client looks midway).
		if send(n) == nil {
			if _, err := r.ReadString('\n'); err == nil {
				c.(*net.TCPConn).SetLinger(0)
			}
		}
	case "stream":
		for send(len(chunk)) == nil {
		}
	}
}

// natFlow is what a node's translation tables hold for one client port: each
// direction's state and remaining life (-1 when the entry is missing).
type natFlow struct {
	fwdState, revState uint8
	fwdLife, revLife   time.Duration
	settled            bool // both halves in lb_nats (the established flows' table)
}

func (f natFlow) String() string {
	return fmt.Sprintf("forward state %d for %s, reverse state %d for %s, both in lb_nats %v", f.fwdState, f.fwdLife.Round(time.Second), f.revState, f.revLife.Round(time.Second), f.settled)
}

// natFlowOf reads the translation of client:port from nats, a node's
// translation tables (lb_nats_new, then lb_nats, whose entries win).
func natFlowOf(t *testing.T, nats []*ebpf.Map, client net.IP, port int) natFlow {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	now := uint64(ts.Nano())
	addr := binary.NativeEndian.Uint32(client.To4())
	var be [2]byte
	binary.BigEndian.PutUint16(be[:], uint16(port))
	sport := binary.NativeEndian.Uint16(be[:])
	f := natFlow{fwdLife: -1, revLife: -1}
	var k bpf.DatapathLbNatKey
	var v bpf.DatapathLbNat
	fwdIn, revIn := -1, -1
	for i, m := range nats {
		it := m.Iterate()
		for it.Next(&k, &v) {
			left := time.Duration(int64(v.Expires - now))
			switch {
			case v.Reverse == 0 && k.Saddr == addr && k.Sport == sport:
				f.fwdState, f.fwdLife, fwdIn = v.State, left, i
			case v.Reverse == 1 && v.Daddr == addr && v.Dport == sport:
				f.revState, f.revLife, revIn = v.State, left, i
			}
		}
		if err := it.Err(); err != nil {
			t.Fatalf("NodePort translations: %v", err)
		}
	}
	f.settled = fwdIn == len(nats)-1 && revIn == len(nats)-1
	return f
}

// A real TCP flow (the kernel's own: window scaling, SACK, segments merged
// by GRO or sent as one GSO packet) through a NodePort carries megabytes
// both ways and is seen closing when it closes, so its translation (and,
// for a backend on another node, its SNAT port) goes 10 s later rather
// than 6 h after its last packet. The translation tracks both sides'
// sequence numbers (lb_nat_tcp) and counts a FIN or RST only when it fits
// them: had it lost a real flow's numbers, the flow would stay
// established here (a tracker that takes nothing more than 16 bytes ahead
// fails three of the four cases). Each case checks the flow established
// midway, then closes it as applications do: FINs after a download or an
// upload, an RST from either side; through n1's NodePort (the backend on
// n2) and n2's (a local backend), in tunnel and native routing and
// through WireGuard. Downloads stalled after about 500 KB in all of these
// before lb_out let replies longer than the MTU through as the segments
// they stand for.
func TestNodePortRealTCPFlowsClose(t *testing.T) {
	// With WireGuard, replies come out of WireGuard's device.
	for _, v := range nodePortModes {
		t.Run(v.name, func(t *testing.T) { testNodePortRealTCP(t, v.routing, v.args...) })
	}
}

func testNodePortRealTCP(t *testing.T, routing string, agentArgs ...string) {
	l := labtest.UpRouting(t, 2, routing, agentArgs...)
	web := labtest.Pod(t, l, "n2", "bulk", "app=bulk")
	labtest.Serve(t, lab.NetNSPath(web.NetNS), 8080, bulkConn, func(b []byte) []byte { return b })
	upsertNodePort(t, l, remoteNodePort("bulk", "10.96.0.20", "TCP", 80, 8080, 30081, web.IP), "n1", "n2")
	clientIP := net.ParseIP("172.30.0.50")
	out := labtest.UnderlayHost(t, l, "out", clientIP.String())
	for _, via := range []struct{ name, node string }{
		{"backend on another node", "n1"}, // DNAT and SNAT, then to n2
		{"local backend", "n2"},           // DNAT only
	} {
		t.Run(via.name, func(t *testing.T) { nodePortRealTCPCases(t, l, via.node, "n2", out, clientIP) })
	}
}

// nodePortRealTCPCases runs TestNodePortRealTCPFlowsClose's flows from the
// namespace at out (address clientIP) through node's NodePort, checking
// node's translation tables and backendNode's conntrack.
func nodePortRealTCPCases(t *testing.T, l *lab.Lab, node, backendNode, out string, clientIP net.IP) {
	// lb_nats last: its entry, when both have one, is the flow's (as the
	// datapath looks).
	nats := pinnedMaps(t, l, node, "lb_nats_new", "lb_nats")
	cts := pinnedMaps(t, l, backendNode, "conntrack_new", "conntrack")
	n, err := l.Node(node)
	if err != nil {
		t.Fatal(err)
	}
	frontend := n.IP + ":30081"
	// The first exchange (WireGuard's first handshake may take a while).
	firstContact(t, l, "a first download through the NodePort", func() bool {
		c, err := labtest.Open(out, frontend)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		fmt.Fprintf(c, "get 1000\n")
		got, err := io.Copy(io.Discard, c)
		return err == nil && got == 1000
	})

	const size = 8 << 20
	for _, c := range []struct {
		name string
		// run talks over c to the backend; midway it calls mid once.
		run func(t *testing.T, c *net.TCPConn, mid func())
	}{
		{"download, then FINs", func(t *testing.T, c *net.TCPConn, mid func()) {
			fmt.Fprintf(c, "get %d\n", size)
			if n, err := io.CopyN(io.Discard, c, size/2); err != nil {
				t.Fatalf("download: %d bytes, then %v", n, err)
			}
			mid()
			if n, err := io.Copy(io.Discard, c); err != nil || n != size/2 {
				t.Fatalf("download: %d more bytes, %v", n, err)
			}
			c.Close()
		}},
		{"upload, then FINs", func(t *testing.T, c *net.TCPConn, mid func()) {
			fmt.Fprintf(c, "put\n")
			chunk := make([]byte, size/2)
			if _, err := c.Write(chunk); err != nil {
				t.Fatal(err)
			}
			mid()
			if _, err := c.Write(chunk); err != nil {
				t.Fatal(err)
			}
			c.CloseWrite()
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil || strings.TrimSpace(line) != strconv.Itoa(size) {
				t.Fatalf("upload: backend counted %q, %v", line, err)
			}
			c.Close()
		}},
		{"client resets", func(t *testing.T, c *net.TCPConn, mid func()) {
			fmt.Fprintf(c, "stream\n")
			if _, err := io.CopyN(io.Discard, c, size); err != nil {
				t.Fatal(err)
			}
			mid()
			c.SetLinger(0)
			c.Close()
		}},
		{"backend resets", func(t *testing.T, c *net.TCPConn, mid func()) {
			fmt.Fprintf(c, "abort %d\n", size)
			if _, err := io.CopyN(io.Discard, c, size/2); err != nil {
				t.Fatal(err)
			}
			mid()
			if n, err := io.CopyN(io.Discard, c, size/2); err != nil {
				t.Fatalf("download: %d more bytes, %v", n, err)
			}
			// Then the backend's RST.
			fmt.Fprintf(c, "reset\n")
			if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("after asking for the reset: %v", err)
			}
			c.Close()
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			oc, err := labtest.Open(out, frontend)
			if err != nil {
				t.Fatalf("dial %s from outside: %v", frontend, err)
			}
			defer oc.Close()
			conn := oc.Conn.(*net.TCPConn)
			conn.SetDeadline(time.Now().Add(30 * time.Second))
			port := conn.LocalAddr().(*net.TCPAddr).Port
			mid := func() {
				f := natFlowOf(t, nats, clientIP, port)
				if f.fwdState != 1 || f.revState != 1 || f.fwdLife < time.Hour || f.revLife < time.Hour || !f.settled {
					t.Fatalf("midway through the flow from port %d: %s; want both established for 6 h, in lb_nats", port, f)
				}
			}
			c.run(t, conn, mid)
			var f natFlow
			deadline := time.Now().Add(5 * time.Second)
			for {
				f = natFlowOf(t, nats, clientIP, port)
				closing := f.fwdState == 2 && f.revState == 2 &&
					f.fwdLife >= 0 && f.fwdLife <= 10*time.Second && f.revLife >= 0 && f.revLife <= 10*time.Second
				if closing {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("after the flow from port %d ended: %s; want both closing, gone within 10 s", port, f)
				}
				time.Sleep(100 * time.Millisecond)
			}
			t.Logf("port %d: %s", port, f)
			// The backend pod's conntrack saw it close too: its RST is
			// checked against the pod's numbers (ct_rst_counts), which it
			// must have followed; had it not, the entry would stay
			// established for 6 h.
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
				open := openBackendFlows(t, cts, 8080)
				if len(open) == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("after the flow from port %d ended, the backend's conntrack still holds established flows to port 8080: %v", port, open)
				}
			}
		})
	}
}

// openBackendFlows lists the live TCP conntrack entries (tables cts) of
// flows into port that are not closing.
func openBackendFlows(t *testing.T, cts []*ebpf.Map, port int) []string {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	now := uint64(ts.Nano())
	var be [2]byte
	binary.BigEndian.PutUint16(be[:], uint16(port))
	dport := binary.NativeEndian.Uint16(be[:])
	var out []string
	for _, m := range cts {
		var k bpf.DatapathCtKey
		var v bpf.DatapathCtEntry
		it := m.Iterate()
		for it.Next(&k, &v) {
			if k.Proto == 6 && k.Dport == dport && v.Expires > now && v.State != 2 {
				out = append(out, fmt.Sprintf("%+v state %d for %s", k, v.State, time.Duration(v.Expires-now).Round(time.Second)))
			}
		}
		if err := it.Err(); err != nil {
			t.Fatalf("conntrack: %v", err)
		}
	}
	return out
}

// pinnedMaps opens node's pinned maps names, closed when t ends.
func pinnedMaps(t *testing.T, l *lab.Lab, node string, names ...string) []*ebpf.Map {
	t.Helper()
	var out []*ebpf.Map
	for _, name := range names {
		m, err := ebpf.LoadPinnedMap(filepath.Join(labtest.PinDir(l, node), name), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		out = append(out, m)
	}
	return out
}
