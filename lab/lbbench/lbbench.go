// Package lbbench owns the kube-proxy-shaped iptables baseline and the
// connection-rate measurement used by the service benchmarks: it renders and
// loads a nat table shaped like kube-proxy's iptables mode into a network
// namespace, serves and probes TCP backends inside namespaces, and measures
// how fast a client namespace can open connections to a set of targets.
//
// Everything here works on a network namespace named by its path (a bind
// mount such as /var/run/netns/x, or /proc/<pid>/ns/net); sockets are
// created on an OS thread locked into that namespace and iptables-restore
// runs as a child of such a thread, so nothing touches the caller's
// namespace.
package lbbench

import (
	"bytes"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// Service is one ClusterIP service port (TCP) and its endpoints.
type Service struct {
	VIP      netip.Addr
	Port     uint16 // TCP
	Backends []netip.AddrPort
}

const (
	// masqMark is kube-proxy's default --iptables-masquerade-bit 14.
	masqMark = "0x4000"
	// largeClusterEndpointsThreshold is kube-proxy's: above this many
	// endpoints in total it drops the per-endpoint comments to keep the
	// ruleset small, and so do we.
	largeClusterEndpointsThreshold = 1000
	// restoreWait is how long iptables-restore waits for the xtables lock
	// (only the legacy backend takes it).
	restoreWait = "--wait=30"
	// dialTimeout bounds one connect in MeasureConnects.
	dialTimeout = time.Second
	// whoAnswersTimeout bounds WhoAnswers (connect and read together).
	whoAnswersTimeout = 2 * time.Second
	// maxReply caps what WhoAnswers reads.
	maxReply = 64 << 10
)

// chainHash is kube-proxy's portProtoHash / servicePortEndpointChainName
// hash: the first 16 characters of base32(sha256(concatenated parts)).
func chainHash(parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "")))
	return base32.StdEncoding.EncodeToString(h[:])[:16]
}

type svcPlan struct {
	name      string // stands in for kube-proxy's "namespace/name:port"
	vip       netip.Addr
	port      uint16
	chain     string
	backends  []netip.AddrPort
	sepChains []string
}

// KubeProxyRules renders an iptables-restore input for table nat shaped like
// kube-proxy's iptables mode: chain KUBE-SERVICES jumped to from OUTPUT and
// PREROUTING, one rule per service port
// `-d VIP/32 -p tcp -m tcp --dport P -j KUBE-SVC-<hash>`, each KUBE-SVC chain
// jumping with `-m statistic --mode random --probability 1/(n-i)` to its
// KUBE-SEP-<hash> chains (the last one unconditionally), each KUBE-SEP chain
// marking hairpin traffic (source = the backend itself) with KUBE-MARK-MASQ
// and DNATing `-p tcp -m tcp -j DNAT --to-destination ip:port`; marked
// packets are masqueraded in KUBE-POSTROUTING, as kube-proxy does.
//
// Chain names hash the service ("VIP:port" stands in for kube-proxy's
// service port name) and the endpoint the way kube-proxy does, so they are
// deterministic; should two services or endpoints collide (duplicates in
// svcs) a suffix is hashed in to keep every chain unique. As in kube-proxy,
// comments are written on every rule unless there are more than 1000
// endpoints in total, when the per-endpoint rules go without them.
//
// The input is complete: it declares the built-in chains and is meant to
// replace the nat table (no --noflush). Only IPv4 is rendered (this is
// iptables, not ip6tables): services whose VIP is not IPv4 and backends that
// are not IPv4 are left out, and so are services without backends (kube-proxy
// rejects those in table filter, not nat); each omission is recorded as a
// '#' comment line at the top.
func KubeProxyRules(svcs []Service) string {
	var skipped []string
	used := make(map[string]bool)
	unique := func(prefix string, parts ...string) string {
		name := prefix + chainHash(parts...)
		for n := 1; used[name]; n++ {
			name = prefix + chainHash(append(parts, "#"+strconv.Itoa(n))...)
		}
		used[name] = true
		return name
	}

	plans := make([]svcPlan, 0, len(svcs))
	endpoints := 0
	for _, s := range svcs {
		vip := s.VIP.Unmap()
		name := netip.AddrPortFrom(vip, s.Port).String()
		if !vip.Is4() {
			skipped = append(skipped, fmt.Sprintf("service %s: VIP is not IPv4", name))
			continue
		}
		p := svcPlan{name: name, vip: vip, port: s.Port}
		for _, b := range s.Backends {
			b = netip.AddrPortFrom(b.Addr().Unmap(), b.Port())
			if !b.Addr().Is4() {
				skipped = append(skipped, fmt.Sprintf("service %s: backend %s is not IPv4", name, b))
				continue
			}
			p.backends = append(p.backends, b)
		}
		if len(p.backends) == 0 {
			skipped = append(skipped, fmt.Sprintf("service %s: no backends", name))
			continue
		}
		p.chain = unique("KUBE-SVC-", name, "tcp")
		for _, b := range p.backends {
			p.sepChains = append(p.sepChains, unique("KUBE-SEP-", name, "tcp", b.String()))
		}
		endpoints += len(p.backends)
		plans = append(plans, p)
	}
	largeCluster := endpoints > largeClusterEndpointsThreshold

	var w strings.Builder
	w.Grow(512 + len(plans)*160 + endpoints*400)
	for _, s := range skipped {
		w.WriteString("# lbbench: skipped ")
		w.WriteString(s)
		w.WriteByte('\n')
	}
	w.WriteString("*nat\n")
	for _, c := range []string{"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"} {
		w.WriteString(":" + c + " ACCEPT [0:0]\n")
	}
	for _, c := range []string{"KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"} {
		w.WriteString(":" + c + " - [0:0]\n")
	}
	for _, p := range plans {
		w.WriteString(":" + p.chain + " - [0:0]\n")
		for _, c := range p.sepChains {
			w.WriteString(":" + c + " - [0:0]\n")
		}
	}
	w.WriteString(`-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES` + "\n")
	w.WriteString(`-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES` + "\n")
	w.WriteString(`-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING` + "\n")
	w.WriteString("-A KUBE-MARK-MASQ -j MARK --or-mark " + masqMark + "\n")
	w.WriteString("-A KUBE-POSTROUTING -m mark ! --mark " + masqMark + "/" + masqMark + " -j RETURN\n")
	w.WriteString("-A KUBE-POSTROUTING -j MARK --xor-mark " + masqMark + "\n")
	w.WriteString(`-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully` + "\n")

	for _, p := range plans {
		port := strconv.Itoa(int(p.port))
		fmt.Fprintf(&w, "-A KUBE-SERVICES -m comment --comment \"%s cluster IP\" -d %s/32 -p tcp -m tcp --dport %s -j %s\n",
			p.name, p.vip, port, p.chain)
		n := len(p.backends)
		for i, b := range p.backends {
			w.WriteString("-A " + p.chain)
			if !largeCluster {
				fmt.Fprintf(&w, " -m comment --comment \"%s -> %s\"", p.name, b)
			}
			if i < n-1 {
				fmt.Fprintf(&w, " -m statistic --mode random --probability %0.10f", 1.0/float64(n-i))
			}
			w.WriteString(" -j " + p.sepChains[i] + "\n")
		}
		for i, b := range p.backends {
			sep := p.sepChains[i]
			comment := ""
			if !largeCluster {
				comment = " -m comment --comment " + p.name
			}
			w.WriteString("-A " + sep + comment + " -s " + b.Addr().String() + "/32 -j KUBE-MARK-MASQ\n")
			w.WriteString("-A " + sep + comment + " -p tcp -m tcp -j DNAT --to-destination " + b.String() + "\n")
		}
	}
	w.WriteString("COMMIT\n")
	return w.String()
}

// emptyNat replaces the nat table with one holding only empty built-in
// chains.
const emptyNat = "*nat\n" +
	":PREROUTING ACCEPT [0:0]\n" +
	":INPUT ACCEPT [0:0]\n" +
	":OUTPUT ACCEPT [0:0]\n" +
	":POSTROUTING ACCEPT [0:0]\n" +
	"COMMIT\n"

// restoreBinary finds iptables-legacy-restore (legacy) or the nf_tables
// iptables-restore: iptables-nft-restore, else plain iptables-restore.
// A missing binary wraps exec.ErrNotFound.
func restoreBinary(legacy bool) (string, error) {
	names := []string{"iptables-nft-restore", "iptables-restore"}
	if legacy {
		names = []string{"iptables-legacy-restore"}
	}
	var firstErr error
	for _, n := range names {
		p, err := exec.LookPath(n)
		if err == nil {
			return p, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return "", fmt.Errorf("lbbench: no %s: %w", strings.Join(names, " or "), firstErr)
}

// restore feeds input to iptables-restore (replacing the tables it names)
// run inside the network namespace at nsPath.
func restore(nsPath, input string, legacy bool) error {
	bin, err := restoreBinary(legacy)
	if err != nil {
		return err
	}
	netNS, err := ns.GetNS(nsPath)
	if err != nil {
		return fmt.Errorf("lbbench: netns %s: %w", nsPath, err)
	}
	defer netNS.Close()
	return netNS.Do(func(ns.NetNS) error {
		// The child is forked from this thread, which Do has locked into
		// netNS, so it inherits that namespace.
		cmd := exec.Command(bin, restoreWait)
		cmd.Stdin = strings.NewReader(input)
		var out bytes.Buffer
		cmd.Stdout = &out
		cmd.Stderr = &out
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("lbbench: %s in netns %s: %w: %s", bin, nsPath, err, strings.TrimSpace(out.String()))
		}
		return nil
	})
}

// Install loads rules (an iptables-restore input, e.g. from KubeProxyRules)
// with iptables-restore inside the network namespace at nsPath, replacing the
// tables it names (no --noflush). legacy selects iptables-legacy-restore;
// otherwise the nf_tables backend is used (iptables-nft-restore, or
// iptables-restore when that is missing).
func Install(nsPath string, rules string, legacy bool) error {
	return restore(nsPath, rules, legacy)
}

// Flush removes the nat rules again in the namespace at nsPath: the nat table
// is replaced by one with empty built-in chains and no others.
func Flush(nsPath string, legacy bool) error {
	return restore(nsPath, emptyNat, legacy)
}

// Result is what MeasureConnects measured.
type Result struct {
	Connects int     // successful connects (three-way handshake completed)
	Errors   int     // failed connects (timeout after 1s, refused, unreachable...)
	Rate     float64 // successful connections per second
	P50, P99 time.Duration
	// FirstErr is the first failed connect's error (nil when Errors is 0).
	FirstErr error
}

// MeasureConnects opens TCP connections from inside the network namespace at
// nsPath to targets, chosen round-robin, for duration d and reports the rate
// of successful connects and their connect latency percentiles. With workers
// <= 1 connections are opened sequentially (connect, then close) by one
// goroutine; with more, that many goroutines do so concurrently, each on its
// own OS thread locked into the namespace, sharing the round-robin.
//
// A connect succeeds when the three-way handshake completes within 1s
// (net.Dialer); its latency is the time Dial took. Connections are closed
// with SO_LINGER 0 (RST), so that at high rates the client's ephemeral ports
// do not pile up in TIME_WAIT; this does not affect the connect latency. A
// connect cut short by the end of the run counts neither way. The error is
// for setup problems (bad arguments, namespace) only.
func MeasureConnects(nsPath string, targets []netip.AddrPort, d time.Duration, workers int) (Result, error) {
	if len(targets) == 0 {
		return Result{}, errors.New("lbbench: MeasureConnects: no targets")
	}
	if d <= 0 {
		return Result{}, fmt.Errorf("lbbench: MeasureConnects: duration %v", d)
	}
	if workers < 1 {
		workers = 1
	}
	addrs := make([]string, len(targets))
	for i, t := range targets {
		addrs[i] = t.String()
	}
	netNS, err := ns.GetNS(nsPath)
	if err != nil {
		return Result{}, fmt.Errorf("lbbench: netns %s: %w", nsPath, err)
	}
	defer netNS.Close()

	type workerOut struct {
		lat      []time.Duration
		errs     int
		firstErr error
	}
	var (
		outs    = make([]workerOut, workers)
		next    atomic.Uint64
		ready   = make(chan error, workers)
		startCh = make(chan struct{})
		end     time.Time // set before startCh is closed
		wg      sync.WaitGroup
	)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			entered := false
			err := netNS.Do(func(ns.NetNS) error {
				entered = true
				ready <- nil
				<-startCh
				out := &outs[w]
				out.lat = make([]time.Duration, 0, 4096)
				for t0 := time.Now(); t0.Before(end); t0 = time.Now() {
					addr := addrs[(next.Add(1)-1)%uint64(len(addrs))]
					// A connect may take 1s but not outlast the run.
					deadline := t0.Add(dialTimeout)
					if end.Before(deadline) {
						deadline = end
					}
					dialer := net.Dialer{Deadline: deadline}
					c, err := dialer.Dial("tcp", addr)
					now := time.Now()
					dt := now.Sub(t0)
					if err != nil {
						if !now.Before(end) {
							break // cut short by the end of the run: not a failure
						}
						out.errs++
						if out.firstErr == nil {
							out.firstErr = err
						}
						continue
					}
					out.lat = append(out.lat, dt)
					if tc, ok := c.(*net.TCPConn); ok {
						_ = tc.SetLinger(0)
					}
					_ = c.Close()
				}
				return nil
			})
			if !entered {
				ready <- fmt.Errorf("lbbench: enter netns %s: %w", nsPath, err)
			}
		}()
	}
	var setupErr error
	for range workers {
		if err := <-ready; err != nil && setupErr == nil {
			setupErr = err
		}
	}
	start := time.Now()
	end = start.Add(d)
	if setupErr != nil {
		end = start // the workers that did enter stop at once
	}
	close(startCh)
	wg.Wait()
	elapsed := time.Since(start)
	if setupErr != nil {
		return Result{}, setupErr
	}

	var res Result
	var lat []time.Duration
	for _, o := range outs {
		lat = append(lat, o.lat...)
		res.Errors += o.errs
		if res.FirstErr == nil {
			res.FirstErr = o.firstErr
		}
	}
	res.Connects = len(lat)
	res.Rate = float64(res.Connects) / elapsed.Seconds()
	slices.Sort(lat)
	res.P50 = percentile(lat, 0.50)
	res.P99 = percentile(lat, 0.99)
	return res, nil
}

// percentile is the nearest-rank p-quantile of sorted (0 when empty).
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(float64(len(sorted))*p)) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// Serve starts, inside the network namespace at nsPath, a TCP listener on
// addr that accepts connections and immediately closes them; when reply is
// non-empty it first writes reply, so a client can tell which backend
// answered. stop closes the listener and waits for the accept loop to end;
// it may be called more than once.
func Serve(nsPath string, addr netip.AddrPort, reply string) (stop func(), err error) {
	var ln *net.TCPListener
	err = ns.WithNetNSPath(nsPath, func(ns.NetNS) error {
		var err error
		ln, err = net.ListenTCP("tcp", net.TCPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("lbbench: listen on %s in netns %s: %w", addr, nsPath, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				time.Sleep(5 * time.Millisecond) // e.g. EMFILE: back off
				continue
			}
			if reply != "" {
				_ = c.SetWriteDeadline(time.Now().Add(time.Second))
				_, _ = io.WriteString(c, reply)
			}
			_ = c.Close()
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			_ = ln.Close()
			<-done
		})
	}, nil
}

// WhoAnswers connects once from inside the network namespace at nsPath to
// target, reads until EOF and returns what the server wrote (as Serve's
// reply; used to count responses by backend). Connect and read together
// time out after 2s.
func WhoAnswers(nsPath string, target netip.AddrPort) (string, error) {
	var out []byte
	err := ns.WithNetNSPath(nsPath, func(ns.NetNS) error {
		deadline := time.Now().Add(whoAnswersTimeout)
		dialer := net.Dialer{Deadline: deadline}
		c, err := dialer.Dial("tcp", target.String())
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.SetDeadline(deadline); err != nil {
			return err
		}
		out, err = io.ReadAll(io.LimitReader(c, maxReply))
		return err
	})
	if err != nil {
		return string(out), fmt.Errorf("lbbench: %s from netns %s: %w", target, nsPath, err)
	}
	return string(out), nil
}
