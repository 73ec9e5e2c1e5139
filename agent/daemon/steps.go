package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/filament-net/filament/agent/datapath"
	"github.com/filament-net/filament/agent/encryption"
	"github.com/filament-net/filament/agent/endpoint"
	"github.com/filament-net/filament/agent/endpoint/veth"
	"github.com/filament-net/filament/agent/enforcement"
	"github.com/filament-net/filament/agent/hostaddrs"
	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipam"
	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/k8s"
	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/agent/kvstore/embedded"
	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/agent/policy"
	"github.com/filament-net/filament/agent/policysync"
	"github.com/filament-net/filament/agent/remotenames"
	"github.com/filament-net/filament/agent/routing"
	"github.com/filament-net/filament/agent/service"
	"github.com/filament-net/filament/agent/sparse"
	"github.com/filament-net/filament/clustermesh/remote"
)

// startKvstore connects to the cluster's etcd (an embedded one when no
// endpoints are configured) and grants the agent's lease.
func (a *Agent) startKvstore(ctx context.Context) error {
	a.kvcfg = a.cfg.Etcd
	a.embeddedEtcd = len(a.kvcfg.Endpoints) == 0
	if a.embeddedEtcd {
		dir := filepath.Join(a.cfg.StateDir, "etcd")
		etcd, err := embedded.Start(embedded.Config{
			Dir: dir, Name: a.cfg.NodeName,
			ClientURL: a.cfg.EmbeddedEtcd.ClientURL, PeerURL: a.cfg.EmbeddedEtcd.PeerURL,
			UnsafeNoFsync: a.cfg.EmbeddedEtcd.UnsafeNoFsync,
			// Clients with a certificate only this agent holds: until
			// 2026-12-07 it served plain HTTP without authentication, and
			// any local user wrote the node's policies there.
			OwnClientTLS: true,
		})
		if err != nil {
			return err
		}
		a.onStop("embedded etcd", etcd.Close)
		a.kvcfg.Endpoints = etcd.Endpoints()
		a.kvcfg.CAFile, a.kvcfg.CertFile, a.kvcfg.KeyFile = etcd.ClientTLS()
		slog.Info("embedded etcd running", "endpoints", a.kvcfg.Endpoints, "dir", dir)
	}
	kv, err := kvstore.Connect(ctx, a.kvcfg)
	if err != nil {
		return err
	}
	a.kv = kv
	a.onStop("kvstore client", func() { kv.Close() })
	if a.lease, err = kv.GrantLease(ctx, time.Duration(a.cfg.LeaseTTL)); err != nil {
		return err
	}
	// On shutdown the lease is left to expire rather than revoked, so a
	// restarting agent takes its references back before anyone collects them.
	a.onStop("lease", a.lease.Abandon)
	return nil
}

// startIdentities starts the identity allocator and its garbage collection.
func (a *Agent) startIdentities(ctx context.Context) error {
	ids, err := identity.NewAllocator(ctx, a.kv, identity.AllocatorConfig{
		ClusterID: a.cfg.ClusterID, ClusterName: a.cfg.ClusterName, Node: a.cfg.NodeName, Lease: a.lease,
	})
	if err != nil {
		return err
	}
	a.ids = ids
	return nil
}

// startAddresses finds the node's address, underlay and pod CIDR (in
// Kubernetes mode from the Node object when it has them; the cluster pool
// and address detection are the fallbacks) and the pod address pool.
func (a *Agent) startAddresses(ctx context.Context) error {
	var kubeCIDR netip.Prefix
	if a.cfg.KubernetesMode() {
		kube, err := k8s.ClientConfig(a.cfg.Kubeconfig, a.cfg.KubernetesAPIServer)
		if err != nil {
			return err
		}
		a.kube = kube
		cidr, addr, err := k8s.NodeInfo(ctx, kube, a.cfg.NodeName)
		if err != nil {
			slog.Info("no Node object to read (pod CIDR from the cluster pool, address detected)", "err", err)
		}
		kubeCIDR = cidr
		if a.cfg.NodeIP == "" && addr.IsValid() {
			a.cfg.NodeIP = addr.String()
			slog.Info("node address from the Node object", "nodeIP", a.cfg.NodeIP)
		}
	}
	var err error
	if a.nodeIP, a.underlayLink, a.underlayMTU, err = underlay(a.cfg.NodeIP); err != nil {
		return err
	}
	a.podCIDR = a.cfg.PodCIDR
	if a.podCIDR == "" && kubeCIDR.IsValid() {
		a.podCIDR = kubeCIDR.String()
		slog.Info("pod CIDR from the Node object", "podCIDR", a.podCIDR)
	}
	if a.podCIDR == "" {
		p, err := node.AllocatePodCIDR(ctx, a.kv, a.cfg.ClusterName, a.cfg.NodeName, netip.MustParsePrefix(a.cfg.ClusterPool), a.cfg.PodCIDRSize)
		if err != nil {
			return err
		}
		a.podCIDR, a.fromPool = p.String(), true
	}
	if a.pool, err = ipam.New(a.podCIDR); err != nil {
		return err
	}
	// Addresses released by the agent before this one stay held back
	// (ipam.ReuseDelay).
	if err := a.pool.Keep(filepath.Join(a.cfg.StateDir, "ipam-released.json")); err != nil {
		return err
	}
	if a.cfg.MTU == 0 {
		a.cfg.MTU = routing.PodMTU(a.cfg.Routing, a.underlayMTU, a.cfg.Encryption == "wireguard")
	}
	return nil
}

// startDatapath loads (or takes back) the BPF programs and maps and the
// router that follows other nodes. Programs and maps stay pinned and
// attached when the agent stops.
func (a *Agent) startDatapath(ctx context.Context) error {
	if err := veth.EnsureNode(a.pool.Gateway()); err != nil {
		return err
	}
	dp, err := datapath.Load(datapath.Config{BPFRoot: a.cfg.BPFRoot, Cluster: a.cfg.ClusterName, Node: a.cfg.NodeName,
		Attach: a.cfg.DatapathAttach, MaglevSize: a.cfg.MaglevTableSize, ProxyPort: uint16(a.cfg.ProxyPort)})
	if err != nil {
		return err
	}
	a.dp = dp
	a.onStop("datapath", func() { dp.Close() })
	if err := dp.SetControlPorts(controlPorts(a.cfg)); err != nil {
		return err
	}
	if err := dp.SetFlowEvents(a.cfg.FlowEvents); err != nil {
		return err
	}
	if err := dp.SetPolicyAudit(a.cfg.PolicyAuditMode); err != nil {
		return err
	}
	if err := dp.SetKernelForwarding(a.cfg.NativeForwarding == "kernel"); err != nil {
		return err
	}
	if a.cfg.PolicyAuditMode {
		slog.Warn("policy audit mode: what policy would drop passes and is reported as AUDIT flows; nothing is enforced")
	}
	if a.router, err = routing.New(dp, a.cfg.Routing, a.cfg.NodeName); err != nil {
		return err
	}
	hostSrc := netip.Addr{} // none: the config may hold an earlier run's
	if a.underlayLink != nil {
		hostSrc = a.nodeIP
		a.router.SetHostSource(a.nodeIP)
	}
	if err := dp.SetHostSource(hostSrc); err != nil {
		return err
	}
	if err := dp.SetNodeIP(a.nodeIP); err != nil {
		return err
	}
	return nil
}

// startEncryption sets up WireGuard or IPsec and node authentication. A
// WireGuard device process that dies stops the agent with an error (its
// supervisor restarts it and the device); meanwhile the peers' pod CIDRs
// keep only their unreachable fallback routes, so nothing leaves in clear.
func (a *Agent) startEncryption(ctx context.Context) error {
	enc, err := encryption.Start(a.cfg, a.dp, a.router, a.underlayMTU, a.nodeIP, a.podCIDR)
	if err != nil {
		return err
	}
	a.enc = enc
	a.onStop("encryption", enc.Close)
	if died := enc.DeviceDied(); died != nil {
		a.goroutine(func() {
			select {
			case <-died:
				a.fail(ErrDeviceDied)
			case <-ctx.Done():
			}
		})
	}
	a.auth, err = encryption.StartNodeAuth(a.cfg, a.router)
	return err
}

// startNode publishes this node's record, follows the cluster's nodes and
// its ipcache.
func (a *Agent) startNode(ctx context.Context) error {
	reg, err := node.NewRegistry(ctx, a.kv, a.lease, node.Node{
		Name: a.cfg.NodeName, Cluster: a.cfg.ClusterName, ClusterID: a.cfg.ClusterID, IPs: []string{a.nodeIP.String()},
		PodCIDRs: []string{a.podCIDR}, Routing: a.cfg.Routing, WireGuardKey: a.enc.PublicKey(), Labels: ec2NodeLabels(ctx, a.cfg),
		Gossip: a.cfg.MemberlistPort != 0,
	}, a.auth.Sign()...)
	if err != nil {
		return err
	}
	a.reg = reg
	a.ipsync = ipcache.New(ctx, a.kv, a.lease, a.cfg.ClusterName, a.cfg.NodeName)
	a.pool.SetBusy(a.ipsync.Withdrawing)
	return nil
}

// startHostAddrs publishes this node's other addresses in its record and
// keeps them current (agent/hostaddrs), so that the other nodes close
// their control ports to pods.
func (a *Agent) startHostAddrs(ctx context.Context) error {
	ex := hostaddrs.Exclude{NodeIPs: []netip.Addr{a.nodeIP}}
	if p, err := netip.ParsePrefix(a.podCIDR); err == nil {
		ex.PodCIDR = p
	}
	a.goroutine(func() {
		hostaddrs.Follow(ctx, ex, 30*time.Second, func(addrs []netip.Addr) {
			err := a.reg.UpdateSelf(ctx, func(n *node.Node) { n.LocalAddrs = hostaddrs.Strings(addrs) })
			slog.Info("node addresses published", "addrs", addrs, "err", err)
		})
	})
	return nil
}

// startPolicy loads the stored policies into the resolver and the
// enforcement engine.
func (a *Agent) startPolicy(context.Context) error {
	var err error
	if a.policies, err = policy.NewRepository(filepath.Join(a.cfg.StateDir, "policies.json")); err != nil {
		return err
	}
	a.res = policy.NewResolver(policy.Mode(a.cfg.EnforcementMode))
	a.res.SetClusterScope(a.cfg.ClusterName, a.cfg.PolicyAllClusters)
	a.engine = enforcement.New(a.dp, a.res, a.policies, []netip.Addr{a.pool.Gateway(), a.nodeIP}, a.ids.Get)
	a.engine.SetCluster(a.ipsync, a.router, a.nodeIP)
	if own, err := netip.ParsePrefix(a.podCIDR); err == nil {
		a.router.SetOwnPodCIDR(own)
	}
	if a.fromPool {
		a.router.SetOwnPool(netip.MustParsePrefix(a.cfg.ClusterPool), !a.cfg.KubernetesMode())
	}
	ranges, pinned, err := a.cfg.RemotePodRanges()
	if err != nil {
		return err
	}
	a.router.SetRemotePodRanges(ranges, pinned)
	if a.cfg.RemoteIPCache == "sparse" {
		// Ingress reads the source identity from the ipcache unless it
		// travels in the VNI (tunnel mode without encryption, whose
		// traffic goes through the WireGuard or XFRM path instead).
		ingress := a.cfg.Routing != routing.Tunnel || a.cfg.Encryption != "none"
		need := sparse.NewNeed(a.cfg.ClusterID, ingress)
		a.engine.SetSparse(need)
		local, err := netip.ParsePrefix(a.podCIDR)
		if err != nil {
			return fmt.Errorf("pod CIDR %q: %w", a.podCIDR, err)
		}
		a.router.SetSparse(need, local)
	}
	// Every identity known now, then every change: until 2026-12-06 the
	// resolver was filled here and subscribed at the endpoints step, and
	// the identities of the steps between never reached it
	// (TestSubscribeListMissesNothing).
	a.ids.SubscribeList(a.engine.IdentityChanged)
	return nil
}

// startServices attaches the load balancer and starts the service manager.
func (a *Agent) startServices(ctx context.Context) error {
	var err error
	if a.lbHooks, err = startLB(a.dp, a.cfg, a.underlayLink); err != nil {
		return err
	}
	reserved, controlPlane := serviceGuards(controlPlaneAddrs(a.kvcfg.Endpoints), []netip.Addr{a.nodeIP, a.pool.Gateway()}, a.reg.List)
	a.services, err = service.New(ctx, service.Config{Cluster: a.cfg.ClusterName, NodeIPs: []netip.Addr{a.nodeIP},
		Algorithm: a.cfg.LBAlgorithm, KV: a.kv, Datapath: a.dp, Reserved: reserved, ControlPlane: controlPlane})
	return err
}

// startDetection starts memberlist failure detection (when on) and ties
// the node registry to the router, node authentication and the detector.
func (a *Agent) startDetection(ctx context.Context) error {
	cfg := a.cfg
	if cfg.MemberlistPort != 0 {
		d, err := node.NewDetector(cfg.NodeName, a.nodeIP, cfg.MemberlistPort, a.gossipKeys, func(name string, alive bool) {
			// Services first: new connections leave the node's backends
			// before its routes go. The registry (what `filament node
			// list` shows) last when the node is back: reachable there
			// means its routes and entries are back too.
			a.services.NodeAlive(cfg.ClusterName, name, alive)
			if alive {
				a.router.SetNodeDown(name, false)
				a.reg.SetReachable(name, true)
			} else {
				a.reg.SetReachable(name, false)
				a.router.SetNodeDown(name, true)
				slog.Warn("node unreachable (failure detection)", "node", name)
			}
		})
		if err != nil {
			return err
		}
		a.detector = d
		a.onStop("failure detection", d.Close)
		a.goroutine(func() { followGossipKeys(ctx, d, a.gossipKeyFile, a.gossipKeys) })
		// A node cut off from the kvstore past its lease keeps its record
		// and entries here while it is reachable (up to four TTLs).
		a.reg.HoldExpired(4 * time.Duration(cfg.LeaseTTL))
		a.ipsync.HoldExpired(a.reg.Reachable, 4*time.Duration(cfg.LeaseTTL))
	}
	a.reg.Subscribe(a.vetNode)
	// The cluster's nodes are learned: other addresses an earlier agent
	// wrote for nodes gone since go.
	a.router.PruneLocalAddrs()
	// A node certificate revoked since: every node is vetted again.
	a.every(ctx, "node revocation list", 10*time.Second, func() (int, error) {
		changed, err := a.auth.ReloadCRL()
		if perr := a.publishCRL(ctx); err == nil {
			err = perr
		}
		if !changed || err != nil {
			return 0, err
		}
		if hs := a.hubbleSrv.Load(); hs != nil {
			hs.RecheckRevoked()
		}
		nodes := a.reg.List()
		for _, n := range nodes {
			a.vetNode(n, false)
		}
		return len(nodes), nil
	})
	// A pod of this node with a flow to another node's pod that went was
	// answered by the pod later given the address as the gone one (the
	// flow's replies are judged with the identity it was admitted with):
	// the conntrack entries naming it go, unless the same pod has the
	// address again by the walk.
	a.dp.SetPeerAlive(func(ip netip.Addr, pod uint64) bool {
		cur, ok := a.router.Held(ip)
		return ok && ipcache.SamePodKey(pod, ipcache.PodKey(cur))
	})
	// (Told with the router's lock held: ScrubPeer only queues.)
	a.router.OnRetired(func(old ipcache.Entry) { a.dp.ScrubPeer(old.IP, ipcache.PodKey(old)) })
	a.ipsync.Subscribe(a.router.EntryChanged)
	return nil
}

// publishCRL keeps the revocation list this agent read in the cluster's
// kvstore for remote clusters (node.CRLPrefix): written when the stored
// one is missing, unreadable or earlier (a node holding the kvstore's
// credentials may delete it or put an earlier one back; the agents put
// theirs back within 10 s, and remote agents never take an earlier one
// than they have).
func (a *Agent) publishCRL(ctx context.Context) error {
	pemData, mine := a.auth.LocalCRL()
	if pemData == nil {
		return nil
	}
	key := node.CRLPrefix + a.cfg.ClusterName
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	stored, err := a.kv.Get(cctx, key)
	switch {
	case errors.Is(err, kvstore.ErrNotFound):
	case err != nil:
		return fmt.Errorf("reading the published revocation list: %w", err)
	default:
		if theirs, err := a.auth.ParseCRL(stored.Value); err == nil && !mine.Newer(theirs) {
			return nil
		}
	}
	if err := a.kv.Put(cctx, key, pemData, 0); err != nil {
		return fmt.Errorf("publishing the revocation list: %w", err)
	}
	slog.Info("node revocation list published for remote clusters", "key", key, "revoked", mine.Len())
	return nil
}

// vetNode follows a change of a node of this cluster: one that node
// authentication refuses goes as deleted (no peer, no routes, no
// entries).
func (a *Agent) vetNode(n node.Node, deleted bool) {
	self := n.Name == a.cfg.NodeName
	if !self && !deleted && !a.auth.Accept(a.cfg.ClusterName, n) {
		a.nodeChanged(n, true)
		if a.detector != nil {
			a.detector.Forget(n.Name)
		}
		return
	}
	if deleted {
		a.auth.Forget(n.Name)
	}
	a.nodeChanged(n, deleted)
	if a.detector != nil && !self {
		if deleted {
			a.detector.Forget(n.Name)
		} else {
			a.detector.Join(n.Name, n.IP(), n.Gossip)
		}
	}
}

// nodeChanged passes a node's change (a refused node as deleted) to the
// router, to the services (a remote backend left out as not its
// cluster's may be now) and to Hubble's peers.
func (a *Agent) nodeChanged(n node.Node, deleted bool) {
	a.router.NodeChanged(n, deleted)
	a.services.NodesChanged(a.router.TakeChangedClusters())
	a.peers.NodeChanged(n, deleted)
}

// startMesh connects to the remote clusters of the cluster mesh config.
func (a *Agent) startMesh(ctx context.Context) error {
	if a.cfg.ClusterMeshConfig == "" {
		return nil
	}
	// A remote's backends must be its own (its nodes' pod CIDRs and
	// addresses, as the router took them).
	a.services.SetRemoteOwner(a.router.Owns)
	a.mesh = remote.NewManager(a.cfg.ClusterMeshConfig, a.cfg.ClusterName, a.cfg.ClusterID, time.Duration(a.cfg.ClusterMeshTTL), remote.Callbacks{
		Node: a.nodeChanged, Identity: a.engine.IdentityChanged, Entry: a.remoteEntry,
		Service: a.services.RemoteChanged, Authenticate: a.auth.Remote(), Revocations: a.auth.Revocations(), Forget: a.auth.Forget,
	})
	pins, err := a.cfg.RemoteClusterIDs()
	if err != nil {
		return err
	}
	a.mesh.PinClusterIDs(pins)
	if a.cfg.ClusterMeshCache {
		a.mesh.ViaCache(a.kv)
	}
	if a.cfg.RemoteIPCache == "sparse" {
		a.remoteNames = remotenames.New(a.mesh.Lookup, remotenames.Config{})
		a.goroutine(func() { a.remoteNames.Run(ctx) })
	}
	a.goroutine(func() { a.mesh.Run(ctx) })
	return nil
}

// remoteEntry passes a remote cluster's ipcache entry to the router, once
// the resolver has the cover identity of its cluster (sparse remote
// ipcache; the mesh checked the identity against the cluster's ID and
// qualified the node name with the cluster's).
func (a *Agent) remoteEntry(e ipcache.Entry, deleted bool) {
	if c, _, ok := strings.Cut(e.Node, "/"); ok && !deleted && a.cfg.RemoteIPCache == "sparse" {
		a.engine.EnsureCover(e.Identity.ClusterID(), c)
	}
	if a.remoteNames != nil {
		a.remoteNames.Forget(e.IP)
	}
	a.router.EntryChanged(e, deleted)
}

// startClusterPolicies applies the stored policies and follows the
// cluster's.
func (a *Agent) startClusterPolicies(ctx context.Context) error {
	if err := a.engine.LoadPolicies(); err != nil {
		return err
	}
	var err error
	a.clusterPolicies, err = policysync.Start(ctx, policysync.Config{Cluster: a.cfg.ClusterName, KV: a.kv, Repo: a.policies,
		Apply: a.applyPolicies, Migrate: !a.cfg.KubernetesMode()})
	return err
}

// startKubernetes starts the informers (Kubernetes mode); they retry until
// the API server (and the CRDs) are there, and pods' labels come from it
// once it answers.
func (a *Agent) startKubernetes(ctx context.Context) error {
	if a.kube == nil {
		return nil
	}
	kube, err := k8s.Start(ctx, a.kube, a.cfg.NodeName, k8sPolicies{a.engine, a.policies}, &a.relabel, a.services, a.podNamespace)
	if err != nil {
		return err
	}
	a.podLabels, a.kubeWatcher = kube.PodLabels, kube
	return nil
}

// podNamespace is the namespace of the pod at ip: this cluster's (its
// ipcache), or another node's or a remote cluster's (the router's
// entries); see podNamespaceOf.
func (a *Agent) podNamespace(ip netip.Addr) (string, bool) {
	var local, remote func(netip.Addr) (ipcache.Entry, bool)
	var remoteCIDR func(netip.Addr) bool
	if a.ipsync != nil {
		local = a.ipsync.Lookup
	}
	if a.router != nil {
		remote, remoteCIDR = a.router.Entry, a.router.RemoteHolds
	}
	return podNamespaceOf(ip, local, remote, remoteCIDR)
}

// podNamespaceOf is the namespace of the pod at ip by the cluster's
// ipcache (local), else by the entries of other nodes and remote clusters
// (remote; either may be nil): ok with "" for a remote cluster's pod whose
// namespace is not known (the sparse remote ipcache holds no names),
// which a Service's slice may not name. Until 2026-12-07 only the
// cluster's ipcache was asked, and a hand-written slice could name a
// remote cluster's pod of any namespace
// (TestSliceCannotNameARemoteClustersPod). An address in a remote
// cluster's node's pod CIDR whose entry is not known (its node down, its
// entry not come) is foreign too (remoteCIDR; the review of that change
// found it taken).
func podNamespaceOf(ip netip.Addr, local, remote func(netip.Addr) (ipcache.Entry, bool), remoteCIDR func(netip.Addr) bool) (string, bool) {
	if local != nil {
		if e, ok := local(ip); ok && e.Namespace != "" {
			return e.Namespace, true
		}
	}
	if remote == nil {
		return "", false
	}
	e, ok := remote(ip)
	switch {
	case !ok:
		return "", remoteCIDR != nil && remoteCIDR(ip)
	case e.Namespace != "":
		return e.Namespace, true
	default:
		// A pod is named here only by its namespace: a remote
		// cluster's without one is foreign to every namespace.
		_, _, ofCluster := strings.Cut(e.Node, "/")
		return "", ofCluster
	}
}

// startGroups follows the cloud groups and the node selectors the
// policies use.
func (a *Agent) startGroups(ctx context.Context) error {
	a.groups = a.startCloudGroups(ctx)
	a.goroutine(func() { followNodeSelectors(ctx, a.reg.List, a.takenNode, a.res, a.engine) })
	return nil
}

// startEndpoints restores the endpoints of the state dir, withdraws the
// ipcache entries of endpoints gone while the agent was down and removes
// leftover datapath entries.
func (a *Agent) startEndpoints(ctx context.Context) error {
	eps, err := endpoint.NewManager(endpoint.Config{StateDir: a.cfg.StateDir, Pool: a.pool, Identities: a.ids, Plumber: veth.New(),
		Hooks: hooks{a.engine, a.lbHooks, a.proxyChanged, a.endpointGone}, MTU: a.cfg.MTU, PodLabels: a.podLabels})
	if err != nil {
		return err
	}
	a.eps = eps
	a.relabel.eps.Store(eps)
	n, err := eps.Restore(ctx)
	if err != nil {
		return err
	}
	if n > 0 {
		slog.Info("restored endpoints from the state dir", "count", n)
	}
	if a.kubeWatcher != nil {
		a.kubeWatcher.Resync(ctx)
	}
	if n, err := a.ipsync.Prune(ctx); err != nil {
		return fmt.Errorf("prune cluster ipcache: %w", err)
	} else if n > 0 {
		slog.Info("withdrew cluster ipcache entries of endpoints gone while the agent was down", "count", n)
	}
	if removed, err := a.engine.Reconcile(); err != nil {
		return fmt.Errorf("reconcile datapath maps: %w", err)
	} else if removed > 0 {
		slog.Info("removed leftover datapath entries", "count", removed)
	}
	// Addresses released shortly before this agent started: their
	// conntrack entries (pinned, they outlive the agent) go, as they would
	// have in the earlier agent's walk.
	for _, ip := range a.pool.Held() {
		a.dp.Scrub(ip)
	}
	// Policies' CIDR identities follow the cluster's nodes (the mesh's
	// come after this reconcile).
	a.every(ctx, "policy CIDR recheck", 2*time.Second, a.engine.RecheckCIDRs)
	if a.names != nil {
		a.names.forgetOthers(eps.List())
	}
	return nil
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

// k8sPolicies is the engine as the Kubernetes watcher uses it, with the
// stored policies' scopes from the repository.
type k8sPolicies struct {
	*enforcement.Engine
	repo *policy.Repository
}

func (p k8sPolicies) Scope(key string) (string, error) { return p.repo.Scope(key) }

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
