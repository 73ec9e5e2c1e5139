package daemon

import (
	"maps"
	"slices"

	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	policyapi "github.com/filament-net/filament/agent/policy/api"

	"github.com/filament-net/filament/agent/api"
	"github.com/filament-net/filament/agent/api/types"
	"github.com/filament-net/filament/agent/datapath"
	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/agent/l7"
	"github.com/filament-net/filament/agent/metrics"
	"github.com/filament-net/filament/agent/monitor"
	"github.com/filament-net/filament/clustermesh/remote"
	"github.com/filament-net/filament/internal/version"
	"github.com/prometheus/client_golang/prometheus"
)

// identityLabels are the labels of an identity, local or remote.
func (a *Agent) identityLabels(n identity.NumericIdentity) []string {
	if id, ok := a.res.Identity(n); ok {
		return id.Labels.Strings()
	}
	if id, err := a.ids.Get(n); err == nil {
		return id.Labels.Strings()
	}
	return nil
}

// startMonitor reads the datapath's events into the monitor hub and runs
// conntrack garbage collection.
func (a *Agent) startMonitor(ctx context.Context) error {
	a.hub = monitor.NewHub(a.identityLabels)
	a.hub.SetInterfaces(func(ifindex uint32) (uint16, identity.NumericIdentity, bool) {
		for _, ep := range a.eps.List() {
			if uint32(ep.HostIfIndex) == ifindex {
				return ep.ID, ep.Identity, true
			}
		}
		return 0, 0, false
	})
	a.goroutine(func() {
		if err := a.dp.ReadEvents(ctx, a.hub.Publish); err != nil {
			slog.Error("datapath events reader stopped", "err", err)
		}
	})
	a.every(ctx, "conntrack", time.Duration(a.cfg.ConntrackGCInterval), a.dp.GCConntrack)
	a.every(ctx, "NodePort NAT", time.Duration(a.cfg.ConntrackGCInterval), a.dp.GCLBNAT)
	return nil
}

// startAPI serves the metrics (and the Prometheus listener when
// configured) and the node API on its unix socket, and starts identity
// garbage collection.
func (a *Agent) startAPI(ctx context.Context) error {
	metricsHandler := metrics.Handler(metrics.Sources{
		Counters: a.dp.Counters, MapPressure: a.dp.MapPressure,
		Endpoints: func() int { return len(a.eps.List()) }, Identities: func() int { return len(a.ids.List()) },
		PolicyEntries: a.engine.PolicyEntries, PolicyWrites: a.dp.PolicyWrites, EventsLost: a.hub.Lost, DatapathEventsLost: a.dp.EventsLost,
		Services: a.services.Count, ServiceErrors: a.services.Errors, NodesRefused: a.auth.Refused,
		RemoteIPCacheRefused: a.router.RemoteIPCacheRefused, PolicyCIDRsLeftOut: a.res.CIDRsLeftOut,
		RemoteBackendsLeftOut: a.services.RemoteBackendsLeftOut, Groups: a.groups.states, Extra: a.extraMetrics(),
		KvstoreTrackedKeys: func() int { return int(kvstore.TrackedKeys()) },
	})
	if a.cfg.PrometheusListen != "" {
		msrv := metricsServer(a.cfg.PrometheusListen, metricsHandler)
		a.goroutine(func() {
			if err := msrv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				slog.Error("prometheus listener stopped", "err", err)
			}
		})
		a.onStop("prometheus listener", func() { msrv.Close() })
	}
	a.srv = &api.Server{
		Endpoints: a.eps, Identities: a.ids, KnownIdentities: a.res.Identities, Policies: a.clusterPolicies, Monitor: a.hub,
		Metrics: metricsHandler, Trace: a.res.Trace, Nodes: a.reg.List, ClusterName: a.cfg.ClusterName, Services: a.services,
		Groups: a.groups, FQDNCache: a.names.list, BPF: a.dp, IdentityLabels: a.identityLabels,
		Encryption: func() (api.EncryptionStatus, error) { return a.enc.Status(a.dp, a.auth) },
		RotateKey:  func(ctx context.Context) (string, error) { return a.enc.Rotate(ctx, a.reg) },
		ClusterMesh: func() []remote.Status {
			if a.mesh == nil {
				return []remote.Status{}
			}
			return a.mesh.Status()
		},
		Status: a.status,
	}
	if err := a.srv.Serve(a.cfg.APISocket); err != nil {
		return err
	}
	a.onStop("api", func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		a.srv.Shutdown(sctx)
		os.Remove(a.cfg.APISocket)
	})
	a.every(ctx, "identity", time.Duration(a.cfg.IdentityGCInterval), func() (int, error) { return a.ids.GC(ctx) })
	return nil
}

// status is what `filament status` shows.
func (a *Agent) status(ctx context.Context) types.Status {
	cfg := a.cfg
	st := types.Status{
		Version: version.Version, NodeName: cfg.NodeName, ClusterName: cfg.ClusterName, ClusterID: cfg.ClusterID,
		PodCIDR: a.podCIDR, Gateway: a.pool.Gateway().String(), StateDir: cfg.StateDir, NodeIP: a.nodeIP.String(), Routing: cfg.Routing,
		Uptime:    types.Duration(time.Since(a.started)),
		Endpoints: len(a.eps.List()), Identities: len(a.ids.List()),
		Policies: len(a.policies.List()), PolicyRev: a.policies.Revision(), Services: a.services.Count(),
		IPAM: types.IPAMStatus{Used: a.pool.Used(), Capacity: a.pool.Capacity()},
		Kvstore: types.KvstoreStatus{Embedded: a.embeddedEtcd, Endpoints: a.kvcfg.Endpoints, Healthy: true,
			LeaseID: fmt.Sprintf("%x", a.lease.ID())},
		Datapath: types.DatapathStatus{EnforcementMode: cfg.EnforcementMode, PolicyAuditMode: cfg.PolicyAuditMode, Attach: cfg.DatapathAttach,
			PinDir: datapath.PinDir(cfg.BPFRoot, cfg.ClusterName, cfg.NodeName), PolicyEntries: a.engine.PolicyEntries(),
			ConntrackEntries: a.dp.ConntrackEntries()},
	}
	if a.kubeWatcher != nil {
		st.Kubernetes = &types.KubernetesStatus{APIServer: a.kubeWatcher.APIServer(), Waiting: a.kubeWatcher.Waiting()}
		if msg, at := a.kubeWatcher.LastError(); msg != "" {
			st.Kubernetes.LastError, st.Kubernetes.LastErrorTime = msg, &at
		}
	}
	if p := a.proxyRef.Load(); p != nil {
		applied, since, err := p.ConfigStatus()
		st.Proxy = &types.ProxyStatus{Applied: applied}
		if err != nil {
			st.Proxy.LastError, st.Proxy.ErrorSince = err.Error(), &since
		}
	}
	hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := a.kv.Get(hctx, kvstore.Prefix+"health"); err != nil && !errors.Is(err, kvstore.ErrNotFound) {
		st.Kvstore.Healthy, st.Kvstore.Error = false, err.Error()
	}
	return st
}

// startProxy starts (or adopts) the node's L7 proxy and keeps it
// configured. Without it, flows that L7 rules apply to are dropped.
func (a *Agent) startProxy(ctx context.Context) error {
	if a.cfg.ProxyPort == 0 {
		slog.Info("L7 proxy off (--proxy-port 0): flows that L7 rules apply to are dropped")
		return nil
	}
	s, err := l7.Start(ctx, l7.Config{Binary: a.cfg.ProxyBinary, StateDir: filepath.Join(a.cfg.StateDir, "proxy"),
		Port: uint16(a.cfg.ProxyPort), OriginMap: a.dp.OriginMapPath(), IPCacheMap: a.dp.IPCacheMapPath(), FrontendMap: a.dp.FrontendMapPath(), Policies: a.res.L7Policies, Endpoints: a.l7Endpoints, EndpointByIP: a.eps.ByIP, IPCache: a.ipcache, Publish: a.hub.Publish,
		Wanted: func() bool { return a.hub.Wants("l7") }, Learn: a.names.learn, DNSReject: a.cfg.DNSRejectResponse,
		FQDNs: func() []policyapi.FQDNSelector { return slices.Collect(maps.Values(a.res.FQDNSelectorsInUse())) }})
	if err != nil {
		slog.Error("L7 proxy off: flows that L7 rules apply to are dropped", "err", err)
		return nil
	}
	a.proxyRef.Store(s)
	a.hub.OnSubscribe(s.WakeRecords)
	a.onStop("l7 proxy supervisor (the proxy keeps running)", s.Wait)
	return nil
}

func (a *Agent) l7Endpoints() map[uint16]l7.Endpoint {
	out := map[uint16]l7.Endpoint{}
	for _, ep := range a.eps.List() {
		if ep.IPv4.IsValid() {
			out[ep.ID] = l7.Endpoint{IP: ep.IPv4, Identity: ep.Identity}
		}
	}
	return out
}

func (a *Agent) ipcache() (map[netip.Prefix]identity.NumericIdentity, uint64) {
	m, gen, err := a.dp.IPCacheSnapshot() // asked every second: listed again only after a write
	if err != nil {
		slog.Warn("ipcache for the L7 proxy", "err", err)
	}
	return m, gen
}

// proxyMetrics are the L7 proxy's metrics, when it runs.
func (a *Agent) proxyMetrics() prometheus.Gatherer {
	if s := a.proxyRef.Load(); s != nil {
		return s
	}
	return nil
}

// proxyChanged asks the L7 proxy's supervisor to push its config now
// (policies or endpoints changed), once it runs.
func (a *Agent) proxyChanged() {
	if s := a.proxyRef.Load(); s != nil {
		s.Changed()
	}
}

// endpointGone forgets what a deleted endpoint left in the DNS name cache.
func (a *Agent) endpointGone(id uint16) {
	if a.names != nil {
		a.names.forget(id)
	}
}

// applyPolicies applies the stored policies and has the L7 proxy follow at
// once rather than at its next periodic check.
func (a *Agent) applyPolicies() error {
	err := a.engine.LoadPolicies()
	a.proxyChanged()
	return err
}

// metricsServer is the Prometheus listener's server: it is on the network
// (from other nodes, and pods through a second node address), so a
// connection left idle, a request trickled or a response never read is
// closed (before, only the head's read was bounded: one idle keep-alive
// connection was held for good).
func metricsServer(addr string, h http.Handler) *http.Server {
	return &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: time.Minute, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 16 << 10}
}
