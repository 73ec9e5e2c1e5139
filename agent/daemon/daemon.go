// Package daemon is the node agent as a value: New checks a configuration
// and Run builds the agent from named start steps, in a fixed order, then
// serves until its context ends. Each step owns its piece (the kvstore, the
// node's record, the datapath, policy, services, the mesh, encryption,
// cloud groups, Kubernetes, the API) and registers that piece's shutdown;
// Run undoes the steps in reverse and waits for every goroutine it started.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"k8s.io/client-go/rest"

	"github.com/filament-net/filament/agent/api"
	"github.com/filament-net/filament/agent/config"
	"github.com/filament-net/filament/agent/datapath"
	"github.com/filament-net/filament/agent/encryption"
	"github.com/filament-net/filament/agent/endpoint"
	"github.com/filament-net/filament/agent/enforcement"
	"github.com/filament-net/filament/agent/hubble"
	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipam"
	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/k8s"
	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/agent/l7"
	"github.com/filament-net/filament/agent/monitor"
	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/agent/policy"
	"github.com/filament-net/filament/agent/policysync"
	"github.com/filament-net/filament/agent/procsys"
	"github.com/filament-net/filament/agent/remotenames"
	"github.com/filament-net/filament/agent/routing"
	"github.com/filament-net/filament/agent/service"
	"github.com/filament-net/filament/clustermesh/remote"
	"github.com/filament-net/filament/crypto/gossipkey"
	"github.com/filament-net/filament/internal/version"
)

// ErrStopped is returned by Run on an agent that has already run.
var ErrStopped = errors.New("agent already ran")

// Agent is one node agent. Its fields are filled by the start steps, in
// the order of steps(); a step only uses what earlier steps made.
type Agent struct {
	cfg     config.Config
	started time.Time
	ready   chan struct{}
	ran     bool

	stops  []stopStep     // shutdowns, run in reverse
	wg     sync.WaitGroup // goroutines the steps started
	failed chan error     // a part that cannot go on (fail): Run stops with it

	// state
	gossipKeys    gossipkey.Keys
	gossipKeyFile string
	// kvstore
	kvcfg        kvstore.Config
	embeddedEtcd bool
	kv           *kvstore.Client
	lease        *kvstore.Lease
	// identity
	ids *identity.Allocator
	// addresses
	nodeIP       netip.Addr
	underlayLink netlink.Link
	underlayMTU  int
	podCIDR      string
	fromPool     bool // podCIDR was allocated from the cluster pool
	pool         *ipam.Pool
	// datapath
	dp     *datapath.Datapath
	router *routing.Router
	// encryption
	enc  *encryption.Encryption
	auth *encryption.NodeAuth
	// node
	reg    *node.Registry
	ipsync *ipcache.Sync
	// policy
	policies *policy.Repository
	res      *policy.Resolver
	engine   *enforcement.Engine
	// services
	lbHooks  *lbNetNS
	services *service.Manager
	// failure detection, mesh, cluster policies, Kubernetes, groups
	detector        *node.Detector
	mesh            *remote.Manager
	remoteNames     *remotenames.Names // names of covered remote pods (sparse remote ipcache)
	clusterPolicies *policysync.Store
	podLabels       func(ctx context.Context, namespace, pod string) ([]string, bool)
	kubeWatcher     *k8s.Watcher
	relabel         k8sPods
	groups          cloudGroups
	names           *dnsNames
	// endpoints, monitor, API
	eps *endpoint.Manager
	hub *monitor.Hub
	// peers are the nodes Hubble's Peer service announces (every node
	// known, from the start: the node and mesh steps feed it).
	peers *hubble.Peers
	// hubbleSrv is the Hubble API's server (nil: Hubble off), whose
	// revoked clients' open calls end when the revocation list changes.
	hubbleSrv atomic.Pointer[hubble.Server]
	// proxy is the L7 proxy's supervisor once it runs (hooks read it
	// from other goroutines).
	proxyRef atomic.Pointer[l7.Supervisor]
	srv      *api.Server
	// kube is the Kubernetes client configuration (nil: not in Kubernetes
	// mode), made by the addresses step.
	kube *rest.Config
	// flowMetrics are the flow metrics and the exporter's, served with
	// the agent's (nil until the hubble step).
	flowMetrics *prometheus.Registry
}

type step struct {
	name  string
	start func(ctx context.Context) error
}

type stopStep struct {
	name string
	stop func()
}

// New checks cfg and returns an agent that has not started; nothing is
// created until Run.
func New(cfg config.Config) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Agent{cfg: cfg, ready: make(chan struct{}), failed: make(chan error, 1), peers: hubble.NewPeers()}, nil
}

// steps are the agent's start steps in order.
func (a *Agent) steps() []step {
	return []step{
		{"proc sys", a.startProcSys},
		{"state", a.startState},
		{"kvstore", a.startKvstore},
		{"identities", a.startIdentities},
		{"addresses", a.startAddresses},
		{"datapath", a.startDatapath},
		{"encryption", a.startEncryption},
		{"node", a.startNode},
		{"node addresses", a.startHostAddrs},
		{"policy", a.startPolicy},
		{"dns names", a.startDNSNames},
		{"services", a.startServices},
		{"failure detection", a.startDetection},
		{"mesh", a.startMesh},
		{"cluster policies", a.startClusterPolicies},
		{"kubernetes", a.startKubernetes},
		{"cloud groups", a.startGroups},
		{"endpoints", a.startEndpoints},
		{"monitor", a.startMonitor},
		{"l7 proxy", a.startProxy},
		{"hubble", a.startHubble},
		{"api", a.startAPI},
	}
}

// Ready is closed once every step has started and the API answers.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// Run starts the steps in order and serves until ctx ends, then stops
// them in reverse and waits for the goroutines they started. A step that
// fails stops the ones before it; its error names the step.
func (a *Agent) Run(ctx context.Context) error {
	if a.ran {
		return ErrStopped
	}
	a.ran = true
	a.started = time.Now()
	ctx, cancel := context.WithCancel(ctx)
	defer a.shutdown(cancel)
	for _, s := range a.steps() {
		if err := s.start(ctx); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	close(a.ready)
	slog.Info("filament-agent ready", "node", a.cfg.NodeName, "cluster", a.cfg.ClusterName, "clusterID", a.cfg.ClusterID,
		"podCIDR", a.podCIDR, "nodeIP", a.nodeIP, "routing", a.cfg.Routing, "socket", a.cfg.APISocket, "version", version.Version)
	select {
	case <-ctx.Done():
	case err := <-a.failed:
		slog.Error("stopping: a part of the agent cannot go on", "err", err)
		return err
	}
	slog.Info("shutting down")
	return nil
}

// ErrDeviceDied: the WireGuard device's own process ended while the agent
// ran.
var ErrDeviceDied = errors.New("the WireGuard device process ended")

// fail makes Run stop and return err (the first such error wins).
func (a *Agent) fail(err error) {
	select {
	case a.failed <- err:
	default:
	}
}

// onStop registers what undoes a step.
func (a *Agent) onStop(name string, f func()) { a.stops = append(a.stops, stopStep{name, f}) }

// goroutine runs f until ctx ends; Run waits for it before returning.
func (a *Agent) goroutine(f func()) {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		f()
	}()
}

func (a *Agent) shutdown(cancel context.CancelFunc) {
	cancel()
	for i := len(a.stops) - 1; i >= 0; i-- {
		slog.Debug("stopping", "step", a.stops[i].name)
		a.stops[i].stop()
	}
	a.wg.Wait()
}

// every runs f every interval until ctx ends, logging what it removed.
func (a *Agent) every(ctx context.Context, what string, interval time.Duration, gc func() (int, error)) {
	a.goroutine(func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if n, err := gc(); err != nil {
					slog.Warn(what+" GC failed", "err", err)
				} else if n > 0 {
					slog.Debug(what+" GC removed entries", "count", n)
				}
			}
		}
	})
}

// startProcSys remounts /proc/sys read-write when asked (the agent in an
// unprivileged container, where the runtime mounts it read-only).
func (a *Agent) startProcSys(context.Context) error {
	if !a.cfg.RemountProcSys {
		return nil
	}
	if err := procsys.RemountWritable(procsys.Path); err != nil {
		return fmt.Errorf("%w (the agent needs CAP_SYS_ADMIN and a security profile that allows mount, or a privileged container)", err)
	}
	slog.Info("remounted read-write", "path", procsys.Path)
	return nil
}

// startState makes the state dir and, with failure detection on, loads
// the cluster's gossip keys.
func (a *Agent) startState(context.Context) error {
	if err := identity.SetMaxClusters(a.cfg.MaxConnectedClusters); err != nil {
		return err
	}
	if err := os.MkdirAll(a.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("stateDir: %w", err)
	}
	if a.cfg.MemberlistPort == 0 {
		return nil
	}
	var err error
	if a.gossipKeyFile, err = gossipKeyFile(a.cfg); err != nil {
		return err
	}
	a.gossipKeys, err = gossipkey.Load(a.gossipKeyFile)
	return err
}
