package daemon

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/filament-net/filament/agent/hubble"
	"github.com/filament-net/filament/agent/hubble/flowmetrics"
	"github.com/filament-net/filament/agent/monitor"
	"github.com/filament-net/filament/internal/version"
)

// startHubble keeps the node's flows (every monitor event, in the flow
// ring) and serves Hubble's API on its unix socket, and to the relay on
// --hubble-listen over mutual TLS.
func (a *Agent) startHubble(ctx context.Context) error {
	if !a.cfg.Hubble {
		return nil
	}
	sock := a.cfg.HubbleSocketPath()
	a.flowMetrics = prometheus.NewRegistry()
	clients := hubble.Clients{Names: a.cfg.HubbleTLSClientNames, PeersFile: a.cfg.HubblePeers, Revoked: a.auth.CheckCert}
	s, err := hubble.New(hubble.Config{
		Meta:     hubble.Meta{NodeName: a.cfg.NodeName, ClusterName: a.cfg.ClusterName, Pod: a.podOf, PodAt: a.podAt, Names: a.dnsNamesOf, Service: a.serviceAt},
		Capacity: a.cfg.HubbleFlows, Address: "unix://" + sock, Version: version.Version, Peers: a.peers,
		OnFlow: flowmetrics.New(a.flowMetrics).Observe, DatapathLost: a.dp.EventsLost, Revoked: clients.Check,
	})
	if err != nil {
		return err
	}
	a.hubbleSrv.Store(s)
	if err := a.startFlowExport(ctx, s, a.flowMetrics); err != nil {
		return err
	}
	ln, err := hubble.ListenUnix(sock)
	if err != nil {
		return err
	}
	type listener struct {
		net.Listener
		tls *tls.Config
	}
	lns := []listener{{ln, nil}}
	if a.cfg.HubbleListen != "" {
		conf, err := hubble.ServerTLS(a.cfg.NodeCert, a.cfg.NodeKey, a.cfg.NodeCA, clients)
		if err != nil {
			ln.Close()
			return err
		}
		tcp, err := net.Listen("tcp", a.cfg.HubbleListen)
		if err != nil {
			ln.Close()
			return fmt.Errorf("hubble API on %s: %w", a.cfg.HubbleListen, err)
		}
		a.peers.SetPort(tcp.Addr().(*net.TCPAddr).Port)
		lns = append(lns, listener{tcp, conf})
	}
	if a.cfg.HubblePeers != "" {
		a.every(ctx, "hubble peers", HubblePeersInterval, hubblePeersChanged(a.cfg.HubblePeers, s))
	}
	events, lost, stop := a.hub.SubscribeCounted(monitor.Filter{})
	a.onStop("hubble flows", stop)
	a.goroutine(func() { s.Follow(events, lost) })
	for _, ln := range lns {
		a.goroutine(func() {
			if err := s.Serve(ctx, ln.Listener, ln.tls); err != nil {
				slog.Error("hubble API stopped", "address", ln.Addr().String(), "err", err)
			}
		})
		slog.Info("hubble API serving", "address", ln.Addr().String(), "flows", a.cfg.HubbleFlows)
	}
	return nil
}

// podOf is a local endpoint's namespace and pod name ("" when unknown).
func (a *Agent) podOf(id uint16) (namespace, pod string) {
	ep, err := a.eps.Get(id)
	if err != nil {
		return "", ""
	}
	return ep.Namespace, ep.PodName
}

// podAt is the namespace and pod name of another node's pod address.
func (a *Agent) podAt(ip netip.Addr) (namespace, pod string) {
	e, ok := a.router.Entry(ip)
	if !ok {
		return "", ""
	}
	if c, _, remote := strings.Cut(e.Node, "/"); remote && e.Pod == "" && a.remoteNames != nil {
		// A covered remote pod: the router holds no names for it.
		return a.remoteNames.Of(c, ip)
	}
	return e.Namespace, e.Pod
}

// serviceAt names the service whose frontend this node load-balances
// ("" when none).
func (a *Agent) serviceAt(fe netip.AddrPort, protocol string) (namespace, name string) {
	if a.services == nil {
		return "", ""
	}
	namespace, name, _ = a.services.At(fe, protocol)
	return namespace, name
}

// dnsNamesOf are the names the DNS proxy learned for ip (asked by
// endpoint ep, or by any when ep is 0).
func (a *Agent) dnsNamesOf(ip netip.Addr, ep uint16) []string {
	if a.names == nil {
		return nil
	}
	return a.names.cache.Names(ip, ep)
}

// HubblePeersInterval is how often the agent reads the list of connected
// clusters (--hubble-peers) for a change.
const HubblePeersInterval = time.Second

// hubblePeersChanged is a step run every HubblePeersInterval (Agent.every):
// it reads the list of connected clusters (file), and when it changed
// ends the open calls of the relays it no longer admits
// (s.RecheckRevoked); new ones are checked against the file at their
// handshake and call.
func hubblePeersChanged(file string, s *hubble.Server) func() (int, error) {
	last, _ := os.ReadFile(file)
	return func() (int, error) {
		b, err := os.ReadFile(file)
		if (err != nil && !errors.Is(err, fs.ErrNotExist)) || bytes.Equal(b, last) {
			return 0, nil // unreadable: Clients.Check refuses the relays meanwhile
		}
		last = b
		if n := s.RecheckRevoked(); n > 0 {
			slog.Info("hubble API: the calls of relays no longer admitted ended", "calls", n, "peers", file)
		}
		return 0, nil
	}
}
