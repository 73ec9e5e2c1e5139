package lab_test

import (
	"io"
	"math/rand/v2"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// A pod's real TCP connection to a host outside the cluster, half-closed
// by the pod (its request sent, then its FIN; the answer to come later),
// is attacked by another host of the underlay that forges segments from
// the server's address and port without knowing any sequence number: a
// FIN and an RST at random numbers. The pod's ingress policy admits
// nothing, so the answer gets through only on the connection's
// conntrack entry. Before 2026-12-06 (found by reading) either forged
// segment made the entry closing, it expired 10 s later, and the answer
// sent after that idle time was dropped: the connection was cut. Now
// both are passed on to the pod (whose kernel ignores them) and change
// nothing, and the answer arrives. Real segments, real sockets, the
// agent's datapath (TestConntrackBlindFINLeavesHalfClosedConnectionsOpen
// and TestConntrackBlindRSTLeavesConnectionsOpen are the programs' own).
func TestForgedFINAndRSTLeaveConnectionOpen(t *testing.T) {
	l := labtest.UpRouting(t, 1, "tunnel")
	client := labtest.Pod(t, l, "n1", "client", "app=client")
	server := labtest.Host(t, l, "server", "10.0.9.1")
	forger := labtest.Host(t, l, "forger", "10.0.9.2")
	labtest.ImportPolicy(t, l, "n1", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client}
spec:
  endpointSelector: {matchLabels: {app: client}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: nobody}}]
  egress:
  - toCIDR: [10.0.9.1/32]
    toPorts: [{ports: [{port: "7000", protocol: TCP}]}]
`)
	// The forger sends from the server's address.
	if out, err := exec.Command("ip", "-n", forger.NetNS, "addr", "add", server.IP+"/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("forger: add %s: %v %s", server.IP, err, out)
	}
	var ln net.Listener
	if err := inNS(t, lab.NetNSPath(server.NetNS), func() (err error) {
		ln, err = net.Listen("tcp4", ":7000")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	// The server reads a request to its end (the client's FIN), then
	// answers when told.
	type served struct {
		req  string
		send chan string
	}
	accepted := make(chan served, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(90 * time.Second))
				req, _ := io.ReadAll(c)
				s := served{string(req), make(chan string, 1)}
				accepted <- s
				if resp, ok := <-s.send; ok {
					c.Write([]byte(resp))
				}
			}()
		}
	}()
	for _, forged := range []string{"FIN", "RST"} {
		t.Run("forged "+forged, func(t *testing.T) {
			var conn *net.TCPConn
			if err := inNS(t, lab.NetNSPath(client.NetNS), func() error {
				c, err := net.DialTimeout("tcp4", net.JoinHostPort(server.IP, "7000"), 5*time.Second)
				if err != nil {
					return err
				}
				conn = c.(*net.TCPConn)
				return nil
			}); err != nil {
				t.Fatalf("the client's connection to the server: %v\n%s", err, labtest.Describe(t, l))
			}
			defer conn.Close()
			if _, err := conn.Write([]byte("request")); err != nil {
				t.Fatal(err)
			}
			if err := conn.CloseWrite(); err != nil { // half-closed: the pod's FIN
				t.Fatal(err)
			}
			var s served
			select {
			case s = <-accepted:
			case <-time.After(10 * time.Second):
				t.Fatal("the server did not get the request and the client's FIN")
			}
			if s.req != "request" {
				t.Fatalf("the server read %q", s.req)
			}
			// Forged segments from the server's address and port to the
			// client's, at numbers nobody knows; the pod's kernel must get
			// them (TCP InSegs; the connection is idle otherwise), or the
			// test proves nothing.
			port := conn.LocalAddr().(*net.TCPAddr).Port
			before := tcpInSegs(t, client.NetNS)
			var segs []*layers.TCP
			for range 20 {
				segs = append(segs, &layers.TCP{SrcPort: 7000, DstPort: layers.TCPPort(port), Seq: rand.Uint32(), Ack: rand.Uint32(), Window: 1000,
					FIN: forged == "FIN", RST: forged == "RST", ACK: true})
			}
			forgeTCP(t, lab.NetNSPath(forger.NetNS), server.IP, client.IP, segs...)
			if got := tcpInSegs(t, client.NetNS) - before; got < 20 {
				t.Fatalf("the pod received %d TCP segments while 20 were forged to it: they do not reach it", got)
			}
			// Idle past a closing entry's 10 s, then the answer.
			time.Sleep(12 * time.Second)
			s.send <- "answer"
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(conn)
			if string(got) != "answer" {
				t.Errorf("after forged %ss and 12 s idle the half-closed connection's answer: %q (%v), want \"answer\": the forged segments cut it", forged, got, err)
				if out, err := labtest.NodeRun(t, l, "n1", "filament", "observe", "--last", "20"); err == nil && strings.TrimSpace(out) != "" {
					t.Logf("filament observe --last 20:\n%s", out)
				}
			}
		})
	}
}

// forgeTCP sends segs from the namespace at path with the source address
// src (which that namespace must hold) to dst, through a raw socket.
func forgeTCP(t *testing.T, path, src, dst string, segs ...*layers.TCP) {
	t.Helper()
	if err := inNS(t, path, func() error {
		raw, err := net.ListenPacket("ip4:tcp", src)
		if err != nil {
			return err
		}
		defer raw.Close()
		for _, seg := range segs {
			if err := seg.SetNetworkLayerForChecksum(&layers.IPv4{SrcIP: net.ParseIP(src).To4(), DstIP: net.ParseIP(dst).To4(), Protocol: layers.IPProtocolTCP}); err != nil {
				return err
			}
			buf := gopacket.NewSerializeBuffer()
			if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true}, seg); err != nil {
				return err
			}
			if _, err := raw.WriteTo(buf.Bytes(), &net.IPAddr{IP: net.ParseIP(dst)}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("forging from %s: %v", src, err)
	}
}

// tcpInSegs is the TCP segments the kernel of network namespace netns
// (its name) received so far (InSegs of /proc/net/snmp).
func tcpInSegs(t *testing.T, netns string) int {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", netns, "cat", "/proc/net/snmp").Output()
	if err != nil {
		t.Fatalf("/proc/net/snmp in %s: %v", netns, err)
	}
	var head []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Tcp:" {
			continue
		}
		if head == nil {
			head = f
			continue
		}
		for i, name := range head {
			if name == "InSegs" && i < len(f) {
				n, err := strconv.Atoi(f[i])
				if err != nil {
					t.Fatalf("InSegs %q: %v", f[i], err)
				}
				return n
			}
		}
	}
	t.Fatalf("no Tcp InSegs in /proc/net/snmp of %s", netns)
	return 0
}
