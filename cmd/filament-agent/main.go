// Command filament-agent runs on every node: it owns the node's endpoints,
// their addresses and identities, stores policy, and serves the API on a
// unix socket. With no flags it runs a single-node cluster on an embedded etcd.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/vishvananda/netlink"

	"github.com/filament-net/filament/agent/api"
	"github.com/filament-net/filament/agent/api/types"
	"github.com/filament-net/filament/agent/config"
	"github.com/filament-net/filament/agent/datapath"
	"github.com/filament-net/filament/agent/encryption"
	"github.com/filament-net/filament/agent/endpoint"
	"github.com/filament-net/filament/agent/endpoint/veth"
	"github.com/filament-net/filament/agent/enforcement"
	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipam"
	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/k8s"
	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/agent/kvstore/embedded"
	"github.com/filament-net/filament/agent/metrics"
	"github.com/filament-net/filament/agent/monitor"
	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/agent/policy"
	"github.com/filament-net/filament/agent/policysync"
	"github.com/filament-net/filament/agent/routing"
	"github.com/filament-net/filament/agent/service"
	"github.com/filament-net/filament/clustermesh/remote"
	"github.com/filament-net/filament/crypto/gossipkey"
	"github.com/filament-net/filament/internal/version"
)

func main() {
	if err := newCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "filament-agent:", err)
		os.Exit(1)
	}
}

func newCommand() *cobra.Command {
	flags := config.Default() // what the flags set, defaults included
	var cfgFile string
	cmd := &cobra.Command{
		Use:           "filament-agent",
		Short:         "Filament node agent: endpoints, identities, policy and the node API",
		Version:       version.Version,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			final := config.Default()
			if cfgFile != "" {
				if err := final.LoadFile(cfgFile); err != nil {
					return err
				}
			}
			// Flags given explicitly win over the file.
			config.ApplyFlags(cmd.Flags(), &final, &flags)
			if err := final.Validate(); err != nil {
				return err
			}
			return run(cmd.Context(), final)
		},
	}
	cmd.Flags().StringVar(&cfgFile, "config", "", "YAML configuration file (flags given explicitly override it)")
	config.RegisterFlags(cmd.Flags(), &flags)
	return cmd
}

func run(parent context.Context, cfg config.Config) error {
	var level slog.Level
	level.UnmarshalText([]byte(cfg.LogLevel))
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	started := time.Now()
	if err := identity.SetMaxClusters(cfg.MaxConnectedClusters); err != nil {
		return err
	}

	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("stateDir: %w", err)
	}
	var gossipKeys gossipkey.Keys
	var keyFile string
	if cfg.MemberlistPort != 0 {
		var err error
		if keyFile, err = gossipKeyFile(cfg); err != nil {
			return err
		}
		if gossipKeys, err = gossipkey.Load(keyFile); err != nil {
			return err
		}
	}
	kvcfg := cfg.Etcd
	embeddedEtcd := len(kvcfg.Endpoints) == 0
	if embeddedEtcd {
		etcd, err := embedded.Start(embedded.Config{
			Dir: filepath.Join(cfg.StateDir, "etcd"), Name: cfg.NodeName,
			ClientURL: cfg.EmbeddedEtcd.ClientURL, PeerURL: cfg.EmbeddedEtcd.PeerURL,
			UnsafeNoFsync: cfg.EmbeddedEtcd.UnsafeNoFsync,
		})
		if err != nil {
			return err
		}
		defer etcd.Close()
		kvcfg.Endpoints = etcd.Endpoints()
		slog.Info("embedded etcd running", "endpoints", kvcfg.Endpoints, "dir", filepath.Join(cfg.StateDir, "etcd"))
	}
	kv, err := kvstore.Connect(ctx, kvcfg)
	if err != nil {
		return err
	}
	defer kv.Close()
	lease, err := kv.GrantLease(ctx, time.Duration(cfg.LeaseTTL))
	if err != nil {
		return err
	}
	// On shutdown the lease is left to expire rather than revoked, so a
	// restarting agent takes its references back before anyone collects them.
	defer lease.Abandon()
	ids, err := identity.NewAllocator(ctx, kv, identity.AllocatorConfig{
		ClusterID: cfg.ClusterID, ClusterName: cfg.ClusterName, Node: cfg.NodeName, Lease: lease,
	})
	if err != nil {
		return err
	}
	// Kubernetes mode: the Node object's pod CIDR and InternalIP, when it
	// has them (the cluster pool and address detection are the fallbacks).
	var kubeCIDR netip.Prefix
	if cfg.Kubeconfig != "" {
		cidr, addr, err := k8s.NodeInfo(ctx, cfg.Kubeconfig, cfg.NodeName)
		if err != nil {
			slog.Info("no Node object to read (pod CIDR from the cluster pool, address detected)", "err", err)
		}
		kubeCIDR = cidr
		if cfg.NodeIP == "" && addr.IsValid() {
			cfg.NodeIP = addr.String()
			slog.Info("node address from the Node object", "nodeIP", cfg.NodeIP)
		}
	}
	nodeIP, underlayLink, underlayMTU, err := underlay(cfg.NodeIP)
	if err != nil {
		return err
	}
	podCIDR := cfg.PodCIDR
	if podCIDR == "" && kubeCIDR.IsValid() {
		podCIDR = kubeCIDR.String()
		slog.Info("pod CIDR from the Node object", "podCIDR", podCIDR)
	}
	if podCIDR == "" {
		p, err := node.AllocatePodCIDR(ctx, kv, cfg.ClusterName, cfg.NodeName, netip.MustParsePrefix(cfg.ClusterPool), cfg.PodCIDRSize)
		if err != nil {
			return err
		}
		podCIDR = p.String()
	}
	pool, err := ipam.New(podCIDR)
	if err != nil {
		return err
	}
	if cfg.MTU == 0 {
		cfg.MTU = routing.PodMTU(cfg.Routing, underlayMTU, cfg.Encryption == "wireguard")
	}
	if err := veth.EnsureNode(pool.Gateway()); err != nil {
		return err
	}
	dp, err := datapath.Load(datapath.Config{BPFRoot: cfg.BPFRoot, Cluster: cfg.ClusterName, Node: cfg.NodeName, Attach: cfg.DatapathAttach,
		MaglevSize: cfg.MaglevTableSize})
	if err != nil {
		return err
	}
	// Programs and maps stay pinned and attached when the agent stops.
	defer dp.Close()
	if err := dp.SetControlPorts(controlPorts(cfg)); err != nil {
		return err
	}
	router, err := routing.New(dp, cfg.Routing, cfg.NodeName)
	if err != nil {
		return err
	}
	enc, err := encryption.Start(cfg, dp, router, underlayMTU, nodeIP, podCIDR)
	if err != nil {
		return err
	}
	defer enc.Close()
	auth, err := encryption.StartNodeAuth(cfg, router)
	if err != nil {
		return err
	}
	reg, err := node.NewRegistry(ctx, kv, lease, node.Node{
		Name: cfg.NodeName, Cluster: cfg.ClusterName, ClusterID: cfg.ClusterID, IPs: []string{nodeIP.String()},
		PodCIDRs: []string{podCIDR}, Routing: cfg.Routing, WireGuardKey: enc.PublicKey(), Labels: ec2NodeLabels(ctx, cfg),
	}, auth.Sign()...)
	if err != nil {
		return err
	}
	ipsync := ipcache.New(ctx, kv, lease, cfg.ClusterName, cfg.NodeName)
	policies, err := policy.NewRepository(filepath.Join(cfg.StateDir, "policies.json"))
	if err != nil {
		return err
	}
	res := policy.NewResolver(policy.Mode(cfg.EnforcementMode))
	res.SetClusterScope(cfg.ClusterName, cfg.PolicyAllClusters)
	for _, id := range ids.List() {
		res.UpsertIdentity(id)
	}
	engine := enforcement.New(dp, res, policies, []netip.Addr{pool.Gateway(), nodeIP}, ids.Get)
	engine.SetCluster(ipsync, router, nodeIP)
	lbHooks, err := startLB(dp, cfg, underlayLink)
	if err != nil {
		return err
	}
	reserved, controlPlane := serviceGuards(controlPlaneAddrs(kvcfg.Endpoints), []netip.Addr{nodeIP, pool.Gateway()}, reg.List)
	services, err := service.New(ctx, service.Config{Cluster: cfg.ClusterName, NodeIPs: []netip.Addr{nodeIP},
		Algorithm: cfg.LBAlgorithm, KV: kv, Datapath: dp, Reserved: reserved, ControlPlane: controlPlane})
	if err != nil {
		return err
	}
	var detector *node.Detector
	if cfg.MemberlistPort != 0 {
		detector, err = node.NewDetector(cfg.NodeName, nodeIP, cfg.MemberlistPort, gossipKeys, func(name string, alive bool) {
			// Services first: new connections leave the node's backends
			// before its routes go.
			services.NodeAlive(cfg.ClusterName, name, alive)
			reg.SetReachable(name, alive)
			router.SetNodeDown(name, !alive)
			if !alive {
				slog.Warn("node unreachable (failure detection)", "node", name)
			}
		})
		if err != nil {
			return err
		}
		defer detector.Close()
		go followGossipKeys(ctx, detector, keyFile, gossipKeys)
		// A node cut off from the kvstore past its lease keeps its record
		// and entries here while it is reachable (up to four TTLs).
		reg.HoldExpired(4 * time.Duration(cfg.LeaseTTL))
		ipsync.HoldExpired(reg.Reachable, 4*time.Duration(cfg.LeaseTTL))
	}
	reg.Subscribe(func(n node.Node, deleted bool) {
		if n.Name != cfg.NodeName && !deleted && !auth.Accept(cfg.ClusterName, n) {
			router.NodeChanged(n, true) // refused: no peer, no routes, no entries
			return
		}
		if deleted {
			auth.Forget(n.Name)
		}
		router.NodeChanged(n, deleted)
		if detector != nil && n.Name != cfg.NodeName {
			if deleted {
				detector.Forget(n.IP())
			} else {
				detector.Join(n.IP())
			}
		}
	})
	ipsync.Subscribe(router.EntryChanged)
	var mesh *remote.Manager
	if cfg.ClusterMeshConfig != "" {
		mesh = remote.NewManager(cfg.ClusterMeshConfig, cfg.ClusterName, cfg.ClusterID, time.Duration(cfg.ClusterMeshTTL), remote.Callbacks{
			Node: router.NodeChanged, Identity: engine.IdentityChanged, Entry: router.EntryChanged,
			Service: services.RemoteChanged, Authenticate: auth.Remote(), Forget: auth.Forget,
		})
		go mesh.Run(ctx)
	}
	if err := engine.LoadPolicies(); err != nil {
		return err
	}
	clusterPolicies, err := policysync.Start(ctx, policysync.Config{Cluster: cfg.ClusterName, KV: kv, Repo: policies,
		Apply: engine.LoadPolicies, Migrate: cfg.Kubeconfig == ""})
	if err != nil {
		return err
	}
	// Kubernetes mode: the informers retry until the API server (and the
	// CRDs) are there; pods' labels come from it once it answers.
	var kube *k8s.Watcher
	var podLabels func(ctx context.Context, namespace, pod string) ([]string, bool)
	var relabel k8sPods
	if cfg.Kubeconfig != "" {
		kube, err = k8s.Start(ctx, cfg.Kubeconfig, cfg.NodeName, engine, &relabel, services)
		if err != nil {
			return err
		}
		podLabels = kube.PodLabels
	}
	cloudGroups := startGroups(ctx, cfg, kv, lease, engine, res)
	go followNodeSelectors(ctx, reg.List, res, engine)
	ids.Subscribe(engine.IdentityChanged)
	eps, err := endpoint.NewManager(endpoint.Config{StateDir: cfg.StateDir, Pool: pool, Identities: ids, Plumber: veth.New(), Hooks: hooks{engine, lbHooks}, MTU: cfg.MTU, PodLabels: podLabels})
	if err != nil {
		return err
	}
	relabel.eps.Store(eps)
	n, err := eps.Restore(ctx)
	if err != nil {
		return err
	}
	if n > 0 {
		slog.Info("restored endpoints from the state dir", "count", n)
	}
	if n, err := ipsync.Prune(ctx); err != nil {
		return fmt.Errorf("prune cluster ipcache: %w", err)
	} else if n > 0 {
		slog.Info("withdrew cluster ipcache entries of endpoints gone while the agent was down", "count", n)
	}
	if removed, err := engine.Reconcile(); err != nil {
		return fmt.Errorf("reconcile datapath maps: %w", err)
	} else if removed > 0 {
		slog.Info("removed leftover datapath entries", "count", removed)
	}
	identityLabels := func(n identity.NumericIdentity) []string {
		if id, ok := res.Identity(n); ok {
			return id.Labels.Strings()
		}
		if id, err := ids.Get(n); err == nil {
			return id.Labels.Strings()
		}
		return nil
	}
	hub := monitor.NewHub(identityLabels)
	hub.SetInterfaces(func(ifindex uint32) (uint16, identity.NumericIdentity, bool) {
		for _, ep := range eps.List() {
			if uint32(ep.HostIfIndex) == ifindex {
				return ep.ID, ep.Identity, true
			}
		}
		return 0, 0, false
	})
	go func() {
		if err := dp.ReadEvents(ctx, hub.Publish); err != nil {
			slog.Error("datapath events reader stopped", "err", err)
		}
	}()
	go collectEvery(ctx, "conntrack", time.Duration(cfg.ConntrackGCInterval), dp.GCConntrack)
	metricsHandler := metrics.Handler(metrics.Sources{
		Counters: dp.Counters, MapPressure: dp.MapPressure,
		Endpoints: func() int { return len(eps.List()) }, Identities: func() int { return len(ids.List()) },
		PolicyEntries: engine.PolicyEntries, PolicyWrites: dp.PolicyWrites, EventsLost: hub.Lost,
		Services: services.Count, ServiceErrors: services.Errors, NodesRefused: auth.Refused,
		Groups: cloudGroups.states,
	})
	if cfg.PrometheusListen != "" {
		msrv := &http.Server{Addr: cfg.PrometheusListen, Handler: metricsHandler, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := msrv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				slog.Error("prometheus listener stopped", "err", err)
			}
		}()
		defer msrv.Close()
	}

	srv := &api.Server{
		Endpoints: eps, Identities: ids, KnownIdentities: res.Identities, Policies: clusterPolicies, Monitor: hub, Metrics: metricsHandler, Trace: res.Trace,
		Nodes: reg.List, ClusterName: cfg.ClusterName, Services: services, Groups: cloudGroups,
		BPF: dp, IdentityLabels: identityLabels,
		Encryption: func() (api.EncryptionStatus, error) { return enc.Status(dp, auth) },
		RotateKey:  func(ctx context.Context) (string, error) { return enc.Rotate(ctx, reg) },
		ClusterMesh: func() []remote.Status {
			if mesh == nil {
				return []remote.Status{}
			}
			return mesh.Status()
		},
		Status: func(ctx context.Context) types.Status {
			st := types.Status{
				Version: version.Version, NodeName: cfg.NodeName, ClusterName: cfg.ClusterName, ClusterID: cfg.ClusterID,
				PodCIDR: podCIDR, Gateway: pool.Gateway().String(), StateDir: cfg.StateDir, NodeIP: nodeIP.String(), Routing: cfg.Routing,
				Uptime:    types.Duration(time.Since(started)),
				Endpoints: len(eps.List()), Identities: len(ids.List()),
				Policies: len(policies.List()), PolicyRev: policies.Revision(), Services: services.Count(),
				IPAM: types.IPAMStatus{Used: pool.Used(), Capacity: pool.Capacity()},
				Kvstore: types.KvstoreStatus{Embedded: embeddedEtcd, Endpoints: kvcfg.Endpoints, Healthy: true,
					LeaseID: fmt.Sprintf("%x", lease.ID())},
				Datapath: types.DatapathStatus{EnforcementMode: cfg.EnforcementMode, Attach: cfg.DatapathAttach,
					PinDir: datapath.PinDir(cfg.BPFRoot, cfg.ClusterName, cfg.NodeName), PolicyEntries: engine.PolicyEntries(),
					ConntrackEntries: dp.ConntrackEntries()},
			}
			hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			if _, err := kv.Get(hctx, kvstore.Prefix+"health"); err != nil && !errors.Is(err, kvstore.ErrNotFound) {
				st.Kvstore.Healthy, st.Kvstore.Error = false, err.Error()
			}
			return st
		},
	}
	if err := srv.Serve(cfg.APISocket); err != nil {
		return err
	}
	slog.Info("filament-agent ready", "node", cfg.NodeName, "cluster", cfg.ClusterName, "clusterID", cfg.ClusterID,
		"podCIDR", podCIDR, "nodeIP", nodeIP, "routing", cfg.Routing, "socket", cfg.APISocket, "version", version.Version)

	go collectEvery(ctx, "identity", time.Duration(cfg.IdentityGCInterval), func() (int, error) { return ids.GC(ctx) })
	<-ctx.Done()
	slog.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	os.Remove(cfg.APISocket)
	return nil
}

// collectEvery runs a garbage collection every interval until ctx ends,
// logging what it removed.
func collectEvery(ctx context.Context, what string, every time.Duration, gc func() (int, error)) {
	t := time.NewTicker(every)
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
}

// underlay finds the node's underlay address (the configured one, else the
// first global IPv4 address), its link and the link's MTU.
func underlay(configured string) (netip.Addr, netlink.Link, int, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return netip.Addr{}, nil, 0, err
	}
	want, _ := netip.ParseAddr(configured)
	for _, l := range links {
		name := l.Attrs().Name
		if strings.HasPrefix(name, "fil") || name == "lo" || strings.HasPrefix(name, "filament_") {
			continue
		}
		addrs, _ := netlink.AddrList(l, netlink.FAMILY_V4)
		for _, a := range addrs {
			ip, ok := netip.AddrFromSlice(a.IP.To4())
			if !ok || !ip.IsGlobalUnicast() {
				continue
			}
			if !want.IsValid() || ip == want {
				return ip, l, l.Attrs().MTU, nil
			}
		}
	}
	if want.IsValid() {
		return netip.Addr{}, nil, 0, fmt.Errorf("nodeIP %s is not an address of this node", want)
	}
	// No underlay: a single node on its own.
	return netip.MustParseAddr("127.0.0.1"), nil, 1500, nil
}

// k8sPods hands pod label changes to the endpoint manager once it exists.
type k8sPods struct {
	eps atomic.Pointer[endpoint.Manager]
}

func (p *k8sPods) SetPodLabels(ctx context.Context, namespace, pod string, labels []string) (int, error) {
	eps := p.eps.Load()
	if eps == nil {
		return 0, nil
	}
	return eps.SetPodLabels(ctx, namespace, pod, labels)
}
