// Package metrics owns the agent's Prometheus metrics: a collector that
// reads the datapath counters and the agent's tables at scrape time, so the
// datapath pays nothing for metrics nobody reads.
package metrics

import (
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/filament-net/filament/agent/datapath"
	"github.com/filament-net/filament/agent/policy"
)

// Sources are what the collector reads; nil funcs are skipped.
type Sources struct {
	// Extra are metrics gathered elsewhere (the L7 proxy's), served too.
	Extra         prometheus.Gatherer
	Counters      func() ([]datapath.Counter, error)
	MapPressure   func() map[string]float64
	Endpoints     func() int
	Identities    func() int
	PolicyEntries func() int
	PolicyWrites  func() uint64
	EventsLost    func() uint64
	// DatapathEventsLost: events the datapath could not report (its
	// events ring was full).
	DatapathEventsLost func() uint64
	// Services and ServiceErrors: local services, failed service map writes.
	Services      func() int
	ServiceErrors func() int
	// NodesRefused: nodes refused by node authentication.
	NodesRefused func() int
	// RemoteIPCacheRefused: writes of remote clusters' ipcache entries
	// refused past their share of the map.
	RemoteIPCacheRefused func() uint64
	// PolicyCIDRsLeftOut: prefixes the policies name that have no CIDR
	// identity (no ipcache key) for a bound (policy.Resolver.CIDRsLeftOut).
	PolicyCIDRsLeftOut func() int
	// RemoteBackendsLeftOut: remote clusters' backends the frontends of
	// global services leave out now, past their share.
	RemoteBackendsLeftOut func() int
	// Groups: cloud groups by state ("resolved", "error", "unresolved",
	// "refused": stored results not applied, groups.Status.Refused).
	Groups func() map[string]int
	// KvstoreTrackedKeys: keys the process's tracked kvstore watches
	// remember (kvstore.TrackedKeys).
	KvstoreTrackedKeys func() int
}

var (
	fwdPackets   = prometheus.NewDesc("filament_forwarded_packets_total", "Packets the datapath forwarded.", []string{"direction"}, nil)
	fwdBytes     = prometheus.NewDesc("filament_forwarded_bytes_total", "Bytes the datapath forwarded.", []string{"direction"}, nil)
	dropPackets  = prometheus.NewDesc("filament_drop_packets_total", "Packets the datapath dropped, by reason.", []string{"reason", "direction"}, nil)
	dropBytes    = prometheus.NewDesc("filament_drop_bytes_total", "Bytes the datapath dropped, by reason.", []string{"reason", "direction"}, nil)
	endpoints    = prometheus.NewDesc("filament_endpoints", "Endpoints on this node.", nil, nil)
	identities   = prometheus.NewDesc("filament_identities", "Identities known to this node.", nil, nil)
	polEntries   = prometheus.NewDesc("filament_policy_map_entries", "Entries in the BPF policy map.", nil, nil)
	polWrites    = prometheus.NewDesc("filament_policy_map_writes_total", "Writes (upserts and deletes) to the BPF policy map.", nil, nil)
	pressure     = prometheus.NewDesc("filament_map_pressure_ratio", "Entries of a BPF map divided by its capacity.", []string{"map"}, nil)
	eventsLost   = prometheus.NewDesc("filament_monitor_events_lost_total", "Datapath events slow monitor clients missed.", nil, nil)
	dpLost       = prometheus.NewDesc("filament_datapath_events_lost_total", "Events (drops, flows) the datapath could not report because its events ring was full.", nil, nil)
	services     = prometheus.NewDesc("filament_services", "Services of the local cluster this node load-balances.", nil, nil)
	groupsDesc   = prometheus.NewDesc("filament_cloud_groups", "Cloud groups (toGroups/fromGroups) by state: resolved, error (last attempt failed; last good set kept), unresolved (an allow selects nothing of it, a deny denies world on its ports), refused (stored results not applied: not under their own key, or not a group's), over-budget (refused in a namespace, one per namespace: its addresses past the namespace's prefix budget or the policies' ipcache share).", []string{"state"}, nil)
	nodesRefused = prometheus.NewDesc("filament_nodes_refused", "Nodes whose records did not authenticate (no peer, no routes).", nil, nil)
	remoteIPCRef = prometheus.NewDesc("filament_remote_ipcache_refused_total", "Writes of remote clusters' ipcache entries refused because they held their share of the BPF ipcache (three quarters; the rest stays for this cluster).", nil, nil)
	policyCIDRs  = prometheus.NewDesc("filament_policy_cidrs_left_out", "Prefixes the policies name that have no CIDR identity (ipcache key) now: those of cloud groups and toCIDR prefixes refused past their namespace's prefix budget or the policies' share of the ipcache (policy.MaxPolicyCIDRs, an eighth), and toFQDNs' learned addresses past theirs.", nil, nil)
	remoteBELeft = prometheus.NewDesc("filament_remote_service_backends_left_out", "Remote clusters' backends of global services this node's frontends leave out now, because remote backends hold their share of the load-balancer maps (a quarter).", nil, nil)
	trackedKeys  = prometheus.NewDesc("filament_kvstore_watched_keys", "Keys the agent's tracked kvstore watches remember (its own cluster's; remote clusters are watched untracked).", nil, nil)
	svcErrors    = prometheus.NewDesc("filament_service_datapath_errors_total", "Failed writes of service frontends to the BPF maps.", nil, nil)
)

// Collector implements prometheus.Collector over Sources.
type Collector struct{ s Sources }

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{fwdPackets, fwdBytes, dropPackets, dropBytes, endpoints, identities, polEntries, polWrites, pressure, eventsLost, dpLost, services, svcErrors, nodesRefused, groupsDesc, remoteIPCRef, remoteBELeft, trackedKeys, policyCIDRs} {
		ch <- d
	}
}

func dirName(d policy.Direction) string {
	if d == policy.Ingress {
		return "ingress"
	}
	return "egress"
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	if c.s.Counters != nil {
		cs, err := c.s.Counters()
		if err != nil {
			slog.Warn("metrics: datapath counters", "err", err)
		}
		for _, x := range cs {
			if x.Reason == datapath.ReasonForwarded {
				ch <- prometheus.MustNewConstMetric(fwdPackets, prometheus.CounterValue, float64(x.Packets), dirName(x.Direction))
				ch <- prometheus.MustNewConstMetric(fwdBytes, prometheus.CounterValue, float64(x.Bytes), dirName(x.Direction))
				continue
			}
			r := datapath.ReasonName(x.Reason)
			ch <- prometheus.MustNewConstMetric(dropPackets, prometheus.CounterValue, float64(x.Packets), r, dirName(x.Direction))
			ch <- prometheus.MustNewConstMetric(dropBytes, prometheus.CounterValue, float64(x.Bytes), r, dirName(x.Direction))
		}
	}
	gauge := func(d *prometheus.Desc, f func() int) {
		if f != nil {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(f()))
		}
	}
	gauge(endpoints, c.s.Endpoints)
	gauge(identities, c.s.Identities)
	gauge(polEntries, c.s.PolicyEntries)
	gauge(services, c.s.Services)
	gauge(nodesRefused, c.s.NodesRefused)
	gauge(remoteBELeft, c.s.RemoteBackendsLeftOut)
	gauge(policyCIDRs, c.s.PolicyCIDRsLeftOut)
	gauge(trackedKeys, c.s.KvstoreTrackedKeys)
	if c.s.Groups != nil {
		for state, n := range c.s.Groups() {
			ch <- prometheus.MustNewConstMetric(groupsDesc, prometheus.GaugeValue, float64(n), state)
		}
	}
	if c.s.ServiceErrors != nil {
		ch <- prometheus.MustNewConstMetric(svcErrors, prometheus.CounterValue, float64(c.s.ServiceErrors()))
	}
	if c.s.PolicyWrites != nil {
		ch <- prometheus.MustNewConstMetric(polWrites, prometheus.CounterValue, float64(c.s.PolicyWrites()))
	}
	if c.s.EventsLost != nil {
		ch <- prometheus.MustNewConstMetric(eventsLost, prometheus.CounterValue, float64(c.s.EventsLost()))
	}
	if c.s.RemoteIPCacheRefused != nil {
		ch <- prometheus.MustNewConstMetric(remoteIPCRef, prometheus.CounterValue, float64(c.s.RemoteIPCacheRefused()))
	}
	if c.s.DatapathEventsLost != nil {
		ch <- prometheus.MustNewConstMetric(dpLost, prometheus.CounterValue, float64(c.s.DatapathEventsLost()))
	}
	if c.s.MapPressure != nil {
		for m, v := range c.s.MapPressure() {
			ch <- prometheus.MustNewConstMetric(pressure, prometheus.GaugeValue, v, m)
		}
	}
}

// Handler serves the collector and the Go runtime metrics, and those of
// s.Extra (e.g. the L7 proxy's) when set.
func Handler(s Sources) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(&Collector{s: s}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var g prometheus.Gatherer = reg
	if s.Extra != nil {
		g = prometheus.Gatherers{reg, s.Extra}
	}
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{})
}
