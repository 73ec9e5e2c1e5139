// Package l7 owns the agent's side of L7 policy: the node's proxy process
// (filament-proxy) started, adopted after an agent restart and started
// again when it dies; the local route the datapath's steered flows need;
// the proxy's configuration, rebuilt from the resolver's L7 policies, the
// endpoints and the ipcache and pushed when it changes; and the proxy's
// request records, read back as monitor events.
//
// The proxy runs in a session of its own and outlives the agent: an agent
// restart neither resets proxied connections nor leaves a moment without a
// listener (the datapath keeps steering to the same port).
package l7

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/monitor"
	"github.com/filament-net/filament/agent/policy"
	"github.com/filament-net/filament/agent/policy/api"
	"github.com/filament-net/filament/agent/proxy"
)

// Route of steered packets: the datapath marks them MarkToProxy, and a rule
// sends that mark to a table whose one route makes every destination local.
const (
	MarkToProxy = 0x200 // bpf/lib/common.h MARK_TO_PROXY
	RouteTable  = 2005
	rulePrio    = 90
)

// ErrNoBinary is returned when the filament-proxy executable is not found.
var ErrNoBinary = errors.New("filament-proxy not found")

// Config of the supervisor.
type Config struct {
	Binary   string // filament-proxy ("" = next to this executable, else PATH)
	StateDir string // the proxy's state dir: persisted config, log, control socket
	Port     uint16 // the proxy's listener
	// OriginMap is the datapath's pinned proxy_origin map ("" = none: the
	// proxy then knows sources by address only).
	OriginMap string
	// IPCacheMap is the datapath's pinned ipcache ("" = none: the proxy
	// decides upstream sources with the ipcache pushed to it).
	IPCacheMap string
	// FrontendMap is the datapath's pinned proxy_frontends ("" = none:
	// NodePort connections to local backends with L7 rules are not
	// steered to the proxy by a datapath without it).
	FrontendMap string

	// Policies are the resolver's L7 policies; Endpoints the local
	// endpoints' addresses by ID; IPCache every known address's identity;
	// EndpointByIP the local endpoint with an address (asked for each
	// record).
	// IPCache also returns a generation that changes whenever the map may
	// differ from the one of the last call (0: unknown): while it and the
	// endpoints stay the same, the configuration's ipcache part (every
	// address the node knows: hundreds of thousands with many learned DNS
	// names) is neither rebuilt nor encoded again.
	Policies     func() []policy.L7Policy
	Endpoints    func() map[uint16]Endpoint
	IPCache      func() (map[netip.Prefix]identity.NumericIdentity, uint64)
	EndpointByIP func(netip.Addr) (uint16, bool)
	// Publish receives each request record as an "l7" monitor event, while
	// Wanted says someone listens (records are not read otherwise).
	Publish func(monitor.Event)
	Wanted  func() bool
	// Learn receives the addresses of each DNS answer the proxy allowed
	// and returns when they are in the datapath (the proxy holds the
	// answer until then); nil: answers are not followed.
	Learn func([]proxy.Learned)
	// FQDNs are the toFQDNs selectors in force: the proxy holds and
	// reports only the answers for names they match (nil: none).
	FQDNs func() []api.FQDNSelector
	// DNSReject is the proxy's answer to a DNS query no rule allows:
	// refused (the default) or nxdomain.
	DNSReject string
}

// Endpoint is a local endpoint's address and identity.
type Endpoint struct {
	IP       netip.Addr
	Identity identity.NumericIdentity
}

// Supervisor keeps the proxy running and configured.
type Supervisor struct {
	cfg    Config
	socket string
	hc     *http.Client
	kick   chan struct{}
	wake   chan struct{} // someone may listen for records now
	wg     sync.WaitGroup

	mu    sync.Mutex
	child *os.Process
	// pushErr is the last push's refusal (nil: the proxy has the current
	// configuration), since pushErrAt.
	pushErr   error
	pushErrAt time.Time
}

// ConfigStatus says whether the proxy has the current configuration, and
// else why not and since when.
func (s *Supervisor) ConfigStatus() (applied bool, since time.Time, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pushErr == nil, s.pushErrAt, s.pushErr
}

// pushed records a push's outcome.
func (s *Supervisor) pushed(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		s.pushErr = nil
		return
	}
	if s.pushErr == nil {
		s.pushErrAt = time.Now()
	}
	s.pushErr = err
}

// Socket is the proxy's control socket under stateDir.
func Socket(stateDir string) string { return filepath.Join(stateDir, "proxy.sock") }

// Start installs the local route, adopts a running proxy or starts one,
// and follows it until ctx ends. The proxy keeps running after that.
func Start(ctx context.Context, cfg Config) (*Supervisor, error) {
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("proxy state dir: %w", err)
	}
	if cfg.Binary == "" {
		cfg.Binary = findBinary()
	}
	if _, err := os.Stat(cfg.Binary); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrNoBinary, cfg.Binary, err)
	}
	if err := ensureRoute(); err != nil {
		return nil, err
	}
	s := newSupervisor(cfg)
	ok, marked := s.answers(ctx)
	if ok && !marked {
		slog.Warn("L7 proxy running, but its sockets do not carry the listener mark: the datapath hands it no flow (an earlier version's); starting it again")
	}
	if ok && marked {
		slog.Info("L7 proxy already running: adopted", "socket", s.socket)
	} else if err := s.spawn(); err != nil {
		// Supervised all the same: started again every
		// missesBeforeRestart seconds until it runs (another socket
		// holding its port, say). Until 2026-12-07 the agent gave up
		// for its whole life.
		slog.Error("L7 proxy did not start; trying again", "err", err)
		s.pushed(fmt.Errorf("the L7 proxy did not start: %w", err))
	}
	s.wg.Add(2)
	go func() { defer s.wg.Done(); s.superviseAndConfigure(ctx) }()
	go func() { defer s.wg.Done(); s.readRecords(ctx) }()
	if cfg.Learn != nil {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.followLearned(ctx) }()
	}
	return s, nil
}

func newSupervisor(cfg Config) *Supervisor {
	s := &Supervisor{cfg: cfg, socket: Socket(cfg.StateDir), kick: make(chan struct{}, 1), wake: make(chan struct{}, 1)}
	s.hc = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", s.socket)
	}}}
	return s
}

// followLearned follows the addresses of the DNS answers the proxy
// allowed, hands each to Learn and acknowledges it, until ctx ends,
// reconnecting.
func (s *Supervisor) followLearned(ctx context.Context) {
	for ctx.Err() == nil {
		if err := s.followLearnedOnce(ctx); err != nil && ctx.Err() == nil {
			slog.Debug("L7 proxy: learned DNS answers", "err", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (s *Supervisor) followLearnedOnce(ctx context.Context) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://proxy/v1/dns/learned", nil)
	resp, err := s.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("learned DNS answers: %s", resp.Status)
	}
	session, _ := strconv.ParseUint(resp.Header.Get(proxy.LearnSessionHeader), 10, 64)
	br := bufio.NewReaderSize(resp.Body, 64*1024)
	for {
		// What has arrived is applied in one go (one policy update per
		// selector however many answers) and acknowledged with the last,
		// up to 1,024 answers or proxy.MaxLearnBatchAddrs addresses (the
		// work is per address: until 2026-12-07 a batch was cut by
		// answers alone, a million addresses, seconds that other pods'
		// answers waited).
		var batch []proxy.Learned
		addrs := 0
		for len(batch) == 0 || br.Buffered() > 0 && len(batch) < 1024 && addrs < proxy.MaxLearnBatchAddrs {
			line, err := br.ReadBytes('\n')
			if err != nil {
				return err
			}
			var x proxy.Learned
			if json.Unmarshal(line, &x) == nil {
				batch = append(batch, x)
				addrs += len(x.Addrs)
			}
		}
		s.cfg.Learn(batch)
		body, _ := json.Marshal(proxy.Ack{Session: session, Seq: batch[len(batch)-1].Seq})
		ack, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://proxy/v1/dns/ack", bytes.NewReader(body))
		ack.Header.Set("Content-Type", "application/json")
		r, err := s.hc.Do(ack)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
}

// Wait waits for the supervisor's goroutines (after ctx ended).
func (s *Supervisor) Wait() {
	s.wg.Wait()
	s.hc.CloseIdleConnections()
	s.mu.Lock()
	if s.child != nil {
		s.child.Release()
	}
	s.mu.Unlock()
}

// WakeRecords has the records reader look at once whether someone listens
// (a monitor subscriber came), instead of at its next check.
func (s *Supervisor) WakeRecords() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Changed asks for the configuration to be rebuilt and pushed now.
func (s *Supervisor) Changed() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func findBinary() string {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "filament-proxy")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("filament-proxy"); err == nil {
		return p
	}
	return "filament-proxy"
}

// ensureRoute makes packets marked MarkToProxy local, whatever their
// destination (the rule and the table's one route).
func ensureRoute() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	_, all, _ := net.ParseCIDR("0.0.0.0/0")
	rt := &netlink.Route{LinkIndex: lo.Attrs().Index, Dst: all, Table: RouteTable, Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST}
	if err := netlink.RouteReplace(rt); err != nil {
		return fmt.Errorf("local route for the L7 proxy (table %d): %w", RouteTable, err)
	}
	rule := netlink.NewRule()
	rule.Mark, rule.Table, rule.Priority, rule.Family = MarkToProxy, RouteTable, rulePrio, unix.AF_INET
	mask := uint32(0xffffffff)
	rule.Mask = &mask
	rules, err := netlink.RuleList(unix.AF_INET)
	if err != nil {
		return err
	}
	for _, r := range rules {
		if r.Table == RouteTable && r.Mark == MarkToProxy {
			return nil
		}
	}
	if err := netlink.RuleAdd(rule); err != nil {
		return fmt.Errorf("rule fwmark %#x lookup %d: %w", MarkToProxy, RouteTable, err)
	}
	return nil
}

// spawn starts the proxy in a session of its own, logging to its state dir.
func (s *Supervisor) spawn() error {
	logf, err := os.OpenFile(filepath.Join(s.cfg.StateDir, "proxy.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	// A proxy that stopped answering may still hold the port (a second
	// one could not bind it) and would go on with its last configuration,
	// out of reach: it is stopped first (until 2026-12-06 it was left
	// running, TestSupervisorReplacesAStuckProxyWhole).
	if err := s.stopHolder(); err != nil {
		return err
	}
	os.Remove(s.socket)
	// --transparent-source: the datapath this agent loads returns the
	// replies of upstream connections from a client's address to the proxy.
	args := []string{"--listen", "0.0.0.0:" + strconv.Itoa(int(s.cfg.Port)), "--control-socket", s.socket, "--state-dir", s.cfg.StateDir, "--transparent-source"}
	if s.cfg.OriginMap != "" {
		args = append(args, "--origin-map", s.cfg.OriginMap)
	}
	if s.cfg.IPCacheMap != "" {
		args = append(args, "--ipcache-map", s.cfg.IPCacheMap)
	}
	if s.cfg.FrontendMap != "" {
		args = append(args, "--frontend-map", s.cfg.FrontendMap)
	}

	if s.cfg.DNSReject != "" {
		args = append(args, "--dns-reject", s.cfg.DNSReject)
	}
	cmd := exec.Command(s.cfg.Binary, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.cfg.Binary, err)
	}
	s.mu.Lock()
	s.child = cmd.Process
	s.mu.Unlock()
	// Reap it when it exits (the supervisor starts another).
	go cmd.Wait()
	for i := 0; i < 50; i++ {
		if ok, marked := s.health(context.Background()); ok {
			if !marked {
				slog.Error("L7 proxy started, but its sockets do not carry the listener mark: the datapath hands it no flow (is filament-proxy older than the agent?)", "binary", s.cfg.Binary)
			}
			slog.Info("L7 proxy started", "pid", cmd.Process.Pid, "port", s.cfg.Port, "socket", s.socket)
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("L7 proxy not answering on %s 5 s after its start (see %s)", s.socket, filepath.Join(s.cfg.StateDir, "proxy.log"))
}

// missesBeforeRestart is how many health checks in a row a proxy may miss
// (each waits a second) before it is stopped and started again: a busy
// proxy may miss one, and restarting it resets every connection it holds.
const missesBeforeRestart = 3

// answers says whether the proxy answers one of missesBeforeRestart
// health checks a second apart (a proxy the previous agent just started
// may hold its lock before its control socket answers), and whether that
// answer said its sockets carry the listener mark. With no proxy
// holding the lock there is nothing to wait for: one check.
func (s *Supervisor) answers(ctx context.Context) (ok, marked bool) {
	for i := 0; ; i++ {
		start := time.Now()
		if ok, marked := s.health(ctx); ok {
			return true, marked
		}
		if i == missesBeforeRestart-1 || ctx.Err() != nil {
			return false, false
		}
		if i == 0 {
			if pid, err := proxy.Holder(s.cfg.StateDir); err == nil && pid == 0 {
				return false, false
			}
		}
		select {
		case <-ctx.Done():
			return false, false
		case <-time.After(time.Second - time.Since(start)):
		}
	}
}

// stopHolder stops the proxy holding the state dir's lock (StopProxy).
func (s *Supervisor) stopHolder() error {
	_, err := StopProxy(s.cfg.StateDir)
	return err
}

// StopProxy stops the proxy holding the lock of its state dir stateDir,
// if one does (then stopped): SIGTERM, then SIGKILL when it has not let
// go 7 s later (its shutdown gives connections 5 s).
func StopProxy(stateDir string) (stopped bool, err error) {
	pid, err := proxy.Holder(stateDir)
	if err != nil {
		time.Sleep(100 * time.Millisecond) // a proxy starting: its pid comes next
		if pid, err = proxy.Holder(stateDir); err != nil {
			return false, err
		}
	}
	if pid == 0 {
		return false, nil
	}
	for _, step := range []struct {
		sig  syscall.Signal
		wait time.Duration
	}{{syscall.SIGTERM, 7 * time.Second}, {syscall.SIGKILL, 3 * time.Second}} {
		slog.Warn("stopping the L7 proxy", "pid", pid, "signal", step.sig)
		if err := syscall.Kill(pid, step.sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			return false, fmt.Errorf("stop the L7 proxy (pid %d): %w", pid, err)
		}
		for end := time.Now().Add(step.wait); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
			if held, err := proxy.Holder(stateDir); err == nil && held == 0 {
				return true, nil
			}
		}
	}
	return false, fmt.Errorf("the L7 proxy (pid %d) still holds %s after SIGKILL", pid, proxy.LockFile(stateDir))
}

func (s *Supervisor) healthy(ctx context.Context) bool {
	ok, _ := s.health(ctx)
	return ok
}

// marked says whether the proxy answers saying its sockets carry
// proxy.ListenerMark (logged when it answers without).
func (s *Supervisor) marked(ctx context.Context) bool {
	ok, marked := s.health(ctx)
	if ok && !marked {
		slog.Warn("L7 proxy answers but its sockets are not marked: the datapath hands it no flow (an earlier version's); starting it again")
	}
	return ok && marked
}

// health asks the proxy whether it runs, and whether its sockets carry
// proxy.ListenerMark, the only ones the datapath hands flows to.
func (s *Supervisor) health(ctx context.Context) (ok, marked bool) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://proxy/healthz", nil)
	resp, err := s.hc.Do(req)
	if err != nil {
		return false, false
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK, resp.Header.Get(proxy.ListenerMarkHeader) == "1"
}

// superviseAndConfigure checks the proxy every second (starting it again
// when it missed missesBeforeRestart checks in a row) and pushes the configuration when it changed, when
// asked, or when the proxy was started again.
func (s *Supervisor) superviseAndConfigure(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var b builder
	misses := 0
	for {
		if s.marked(ctx) {
			misses = 0
		} else if ctx.Err() == nil {
			if misses++; misses >= missesBeforeRestart {
				slog.Warn("L7 proxy not answering: starting it again", "missed", misses)
				if err := s.spawn(); err != nil {
					slog.Error("L7 proxy", "err", err)
				}
				misses = 0
			}
			b.pushed = false
		}
		if body, changed := b.build(s.cfg); changed {
			err := s.push(ctx, body)
			if err != nil {
				slog.Error("L7 proxy configuration not applied", "err", err)
			} else {
				b.pushed = true
			}
			s.pushed(err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.kick:
		}
	}
}

// builder makes the proxy's configuration every second, from its parts:
// the policies and FQDN rules (small; built and encoded each time) and the
// ipcache (large; built and encoded again only when its generation or the
// endpoints changed).
type builder struct {
	pushed bool   // the proxy has body
	body   []byte // the last configuration built (JSON)
	head   []byte // its policies and FQDN rules (JSON)

	gen uint64 // the ipcache generation ipc was built from
	eps map[uint16]Endpoint
	ipc []proxy.IPCacheEntry
}

// build returns the configuration of now, and whether it differs from the
// one the proxy has.
func (b *builder) build(c Config) (body []byte, changed bool) {
	eps := c.Endpoints()
	ipc, gen := c.IPCache()
	sameIPCache := b.ipc != nil && gen != 0 && gen == b.gen && maps.Equal(eps, b.eps)
	if !sameIPCache {
		b.ipc, b.gen, b.eps = IPCacheEntries(eps, ipc), gen, maps.Clone(eps)
	}
	cfg := proxy.Config{Policies: Policies(c.Policies(), eps)}
	if c.FQDNs != nil {
		for _, sel := range c.FQDNs() {
			cfg.FQDNs = append(cfg.FQDNs, proxy.DNSRule(sel))
		}
		slices.SortFunc(cfg.FQDNs, func(a, b proxy.DNSRule) int {
			return strings.Compare(a.MatchName+"\x00"+a.MatchPattern, b.MatchName+"\x00"+b.MatchPattern)
		})
	}
	head, _ := json.Marshal(cfg)
	if sameIPCache && bytes.Equal(head, b.head) {
		return b.body, !b.pushed
	}
	cfg.IPCache = b.ipc
	body, _ = json.Marshal(cfg)
	changed = !b.pushed || !bytes.Equal(body, b.body)
	b.head, b.body = head, body
	if changed {
		b.pushed = false
	}
	return body, changed
}

// Build turns the resolver's L7 policies into the proxy's configuration:
// one port policy per endpoint address, direction and port, with one peer
// rule per set of rules, listing the identities it applies to (none: any
// peer).
func Build(pols []policy.L7Policy, eps map[uint16]Endpoint, ipc map[netip.Prefix]identity.NumericIdentity) proxy.Config {
	return proxy.Config{Policies: Policies(pols, eps), IPCache: IPCacheEntries(eps, ipc)}
}

// Policies is Build's port policies.
func Policies(pols []policy.L7Policy, eps map[uint16]Endpoint) []proxy.PortPolicy {
	cfg := proxy.Config{Policies: []proxy.PortPolicy{}}
	index := map[string]int{}
	// The peer rule of each port policy and set of rules (Refs) that
	// identities are listed in: one copy of the rules however many
	// identities they apply to. Until 2026-12-06 each identity had its own
	// copy, and one tenant's rules over many identities took the
	// configuration past the proxy's 64 MiB, which the proxy then refused
	// whole, freezing every tenant's L7 policy on the node
	// (TestPoliciesShareRulesAcrossIdentities).
	shared := map[string]int{}
	for _, p := range pols {
		ep, ok := eps[p.Endpoint]
		if !ok {
			continue
		}
		ip := ep.IP
		dir := "egress"
		if p.Dir == policy.Ingress {
			dir = "ingress"
		}
		proto, kind := "TCP", proxy.KindHTTP
		if p.Proto == 17 {
			proto = "UDP"
		}
		switch {
		case len(p.DNS) > 0:
			kind = proxy.KindDNS
		case len(p.Kafka) > 0:
			kind = proxy.KindKafka
		}
		key := fmt.Sprintf("%s/%s/%d/%s", ip, dir, p.Port, proto)
		i, ok := index[key]
		if !ok {
			i = len(cfg.Policies)
			index[key] = i
			cfg.Policies = append(cfg.Policies, proxy.PortPolicy{Endpoint: ip, Direction: dir, Port: p.Port, Protocol: proto, Kind: kind})
		}
		// HTTP, DNS and Kafka rules on one port (from different rules or
		// policies, even merged into one entry): the port keeps its first
		// kind and the other kinds' rules are left out; a peer left with
		// none gets nothing through (fail closed), rather than the proxy
		// refusing the node's whole configuration.
		if dropped := mixedKinds(&p, cfg.Policies[i].Kind); dropped != "" {
			slog.Warn("L7 rules of two kinds on one port: the other kind's are left out",
				"endpoint", ip, "direction", dir, "port", p.Port, "protocol", proto, "kept", cfg.Policies[i].Kind, "left out", dropped, "rules", strings.Join(p.Refs, ", "))
			if len(p.HTTP)+len(p.DNS)+len(p.Kafka) == 0 {
				continue
			}
		}
		sharedKey := key + "\x00" + strings.Join(p.Refs, "\n")
		if j, ok := shared[sharedKey]; ok && p.Identity != 0 {
			r := &cfg.Policies[i].Rules[j]
			r.Remotes = append(r.Remotes, uint32(p.Identity))
			continue
		}
		pr := proxy.PeerRules{HTTP: []proxy.HTTPRule{}}
		if p.Identity != 0 {
			pr.Remotes = []uint32{uint32(p.Identity)}
		}
		for _, h := range p.HTTP {
			// A rule the proxy would refuse (the API validates the same,
			// but a policy stored by an older agent was not) is left out,
			// not the node's whole configuration with it.
			r := HTTPRule(h)
			if first, err := checkHTTPRule(r); err != nil {
				if first {
					slog.Warn("an HTTP rule the L7 proxy cannot take is left out", "endpoint", ip, "port", p.Port, "rules", strings.Join(p.Refs, ", "), "err", err)
				}
				continue
			}
			pr.HTTP = append(pr.HTTP, r)
		}
		if len(p.HTTP) > 0 && len(pr.HTTP) == 0 && len(p.DNS)+len(p.Kafka) == 0 {
			continue // none left: nothing through (fail closed)
		}
		for _, d := range p.DNS {
			pr.DNS = append(pr.DNS, proxy.DNSRule(d))
		}
		for _, k := range p.Kafka {
			pr.Kafka = append(pr.Kafka, proxy.KafkaRule(k))
		}
		if p.Identity != 0 {
			shared[sharedKey] = len(cfg.Policies[i].Rules)
		}
		cfg.Policies[i].Rules = append(cfg.Policies[i].Rules, pr)
	}
	return cfg.Policies
}

// ruleChecks remembers the proxy's verdict on each HTTP rule seen, by the
// rule's JSON: Policies runs every second, and compiling every rule's
// expressions (and warning of a refused one) each time is work done again
// for nothing. Emptied when it holds maxRuleChecks.
var ruleChecks struct {
	mu sync.Mutex
	m  map[string]error
}

const maxRuleChecks = 4096

// checkHTTPRule is proxy.CheckHTTPRule, remembered; first: r was not seen
// before.
func checkHTTPRule(r proxy.HTTPRule) (first bool, err error) {
	b, _ := json.Marshal(r)
	ruleChecks.mu.Lock()
	defer ruleChecks.mu.Unlock()
	if err, ok := ruleChecks.m[string(b)]; ok {
		return false, err
	}
	if ruleChecks.m == nil || len(ruleChecks.m) >= maxRuleChecks {
		ruleChecks.m = map[string]error{}
	}
	err = proxy.CheckHTTPRule(r)
	ruleChecks.m[string(b)] = err
	return true, err
}

// IPCacheEntries is Build's ipcache: the local endpoints' addresses with
// their identities, then every other prefix of ipc, sorted.
func IPCacheEntries(eps map[uint16]Endpoint, ipc map[netip.Prefix]identity.NumericIdentity) []proxy.IPCacheEntry {
	out := make([]proxy.IPCacheEntry, 0, len(eps)+len(ipc))
	seen := map[netip.Prefix]bool{}
	for _, ep := range eps {
		p := netip.PrefixFrom(ep.IP, 32)
		seen[p] = true
		out = append(out, proxy.IPCacheEntry{Prefix: p, Identity: uint32(ep.Identity)})
	}
	for p, id := range ipc {
		if !seen[p] {
			out = append(out, proxy.IPCacheEntry{Prefix: p, Identity: uint32(id)})
		}
	}
	slices.SortFunc(out, func(a, b proxy.IPCacheEntry) int {
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c
		}
		return a.Prefix.Bits() - b.Prefix.Bits()
	})
	return out
}

// mixedKinds clears p's rules of the kinds other than kind and names them
// ("" when there were none).
func mixedKinds(p *policy.L7Policy, kind string) string {
	var dropped []string
	if kind != proxy.KindHTTP && len(p.HTTP) > 0 {
		p.HTTP, dropped = nil, append(dropped, proxy.KindHTTP)
	}
	if kind != proxy.KindDNS && len(p.DNS) > 0 {
		p.DNS, dropped = nil, append(dropped, proxy.KindDNS)
	}
	if kind != proxy.KindKafka && len(p.Kafka) > 0 {
		p.Kafka, dropped = nil, append(dropped, proxy.KindKafka)
	}
	return strings.Join(dropped, ",")
}

// HTTPRule is a policy document's HTTP rule as the proxy takes it.
func HTTPRule(h api.PortRuleHTTP) proxy.HTTPRule {
	r := proxy.HTTPRule{Method: h.Method, Path: h.Path, Host: h.Host, Headers: h.Headers}
	for _, m := range h.HeaderMatches {
		r.HeaderMatches = append(r.HeaderMatches, proxy.HeaderMatch{Name: m.Name, Value: m.Value, Mismatch: m.Mismatch})
	}
	return r
}

func (s *Supervisor) push(ctx context.Context, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPut, "http://proxy/v1/config", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("proxy refused the configuration: %s: %s", resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}

// readRecords follows the proxy's records while someone listens for them,
// until ctx ends, reconnecting.
func (s *Supervisor) readRecords(ctx context.Context) {
	for ctx.Err() == nil {
		if s.cfg.Wanted == nil || s.cfg.Wanted() {
			if err := s.followRecords(ctx); err != nil && ctx.Err() == nil {
				slog.Debug("L7 proxy records", "err", err)
			}
		}
		select {
		case <-ctx.Done():
		case <-s.wake:
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// followRecords reads records until the stream ends or nobody listens any
// more (checked every second: the stream is then closed, and the proxy
// stops encoding records for the agent).
func (s *Supervisor) followRecords(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if s.cfg.Wanted != nil {
		go func() {
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					if !s.cfg.Wanted() {
						cancel()
						return
					}
				}
			}
		}()
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://proxy/v1/records", nil)
	req.Header.Set("Accept", proxy.RecordsBinary)
	resp, err := s.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.Header.Get("Content-Type") == proxy.RecordsBinary {
		rr := proxy.NewRecordReader(resp.Body)
		for {
			var r proxy.Record
			if err := rr.Read(&r); err != nil {
				return err
			}
			s.cfg.Publish(s.event(r))
		}
	}
	// A proxy of a version before the binary form (it outlives agent
	// upgrades) streams NDJSON.
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		var r proxy.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			continue
		}
		s.cfg.Publish(s.event(r))
	}
	return sc.Err()
}

// event is a record as a monitor event of the endpoint whose policy applied.
func (s *Supervisor) event(r proxy.Record) monitor.Event {
	ev := monitor.Event{Time: r.Time, Type: "l7", Reason: r.Reason, Direction: r.Direction,
		SrcIdentity: identity.NumericIdentity(r.SrcIdentity), DstIdentity: identity.NumericIdentity(r.DstIdentity),
		Src: netip.AddrPortFrom(r.SrcIP, r.SrcPort), Dst: netip.AddrPortFrom(r.DstIP, r.DstPort), Protocol: "TCP",
		L7: &monitor.L7{Protocol: r.Protocol, Method: r.Method, Host: r.Host, Path: r.Path, Status: r.Status,
			Latency: r.Latency, Verdict: r.Verdict, Notes: r.Notes, DNSRcode: r.DNSRcode, DNSAnswers: r.DNSAnswers, DNSTTL: r.DNSTTL}}
	if strings.HasPrefix(r.Protocol, "DNS/") {
		ev.Protocol = strings.TrimPrefix(r.Protocol, "DNS/")
	}
	local := func(ip netip.Addr) (uint16, bool) {
		if !ip.IsValid() || s.cfg.EndpointByIP == nil {
			return 0, false
		}
		return s.cfg.EndpointByIP(ip)
	}
	if id, ok := local(r.Endpoint); ok {
		ev.Endpoint = id
	}
	for _, peer := range []netip.Addr{r.SrcIP, r.DstIP} {
		if peer == r.Endpoint {
			continue
		}
		if id, ok := local(peer); ok {
			ev.PeerEP = id
			break
		}
	}
	return ev
}

// Gather reads the proxy's metrics (a prometheus.Gatherer, so the agent's
// /metrics serves them beside its own). A proxy that does not answer gives
// none, not an error: the agent's own metrics stay available.
func (s *Supervisor) Gather() ([]*dto.MetricFamily, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://proxy/metrics", nil)
	req.Header.Set("Accept", "text/plain")
	resp, err := s.hc.Do(req)
	if err != nil {
		return nil, nil
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("L7 proxy metrics: %w", err)
	}
	out := make([]*dto.MetricFamily, 0, len(fams))
	for _, name := range slices.Sorted(maps.Keys(fams)) {
		if strings.HasPrefix(name, "filament_proxy_") {
			out = append(out, fams[name])
		}
	}
	return out, nil
}
