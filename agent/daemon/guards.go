package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/filament-net/filament/agent/config"
	"github.com/filament-net/filament/agent/datapath"
	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/agent/routing"
	"github.com/filament-net/filament/crypto/gossipkey"
)

// gossipKeyFile is the file the cluster's gossip keys come from: the
// configured one, or with the embedded etcd (a one-node cluster) a key kept
// in the state dir. An agent of a multi-node cluster without a key file is
// refused: its gossip would be open to anyone on the node network.
func gossipKeyFile(cfg config.Config) (string, error) {
	if cfg.GossipKeyFile != "" {
		return cfg.GossipKeyFile, nil
	}
	if len(cfg.Etcd.Endpoints) > 0 {
		return "", fmt.Errorf("%w: gossipKeyFile: needed with memberlistPort %d and an external etcd (the cluster bundle's %s, from filament clustermesh enable), or set memberlistPort 0",
			config.ErrInvalid, cfg.MemberlistPort, gossipkey.FileName)
	}
	path := filepath.Join(cfg.StateDir, gossipkey.FileName)
	return path, gossipkey.Ensure(path)
}

// followGossipKeys re-reads the key file every few seconds and hands a
// changed key set to the detector (a rotation step); a bad file keeps the
// keys in use and is logged.
func followGossipKeys(ctx context.Context, d *node.Detector, path string, keys gossipkey.Keys) {
	last := string(keys.Format())
	t := time.NewTicker(3 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ks, err := gossipkey.Load(path)
		if err != nil {
			slog.Error("gossip keys not reloaded; keeping the current ones", "err", err)
			continue
		}
		if string(ks.Format()) == last {
			continue
		}
		if err := d.SetKeys(ks); err != nil {
			slog.Error("gossip keys not applied", "err", err)
			continue
		}
		last = string(ks.Format())
		slog.Info("gossip keys changed", "keys", len(ks))
	}
}

// controlPorts are the node's control-plane ports pods may not reach on a
// node address unless their egress policy names the port: gossip, the
// proxy, the metrics and Hubble listeners, the overlay, and the kvstore's
// ports (an embedded etcd's listeners; an external kvstore's endpoints,
// which may be on a node's address, as the chart's clustermesh-apiserver
// on the host network is). kvstore has bit i set when ports[i] is the
// kvstore's alone: a NodePort may translate to it on a node's address
// (the chart's clustermesh-apiserver serves remote clusters so), to no
// other control port there.
func controlPorts(cfg config.Config) (ports []uint16, kvstore uint16) {
	inKvstore := false
	add := func(p int) {
		switch {
		case p <= 0 || p >= 65536 || slices.Contains(ports, uint16(p)):
		case len(ports) == datapath.MaxControlPorts:
			slog.Warn("control port not protected: the datapath protects only the first ones", "port", p, "max", datapath.MaxControlPorts)
		default:
			if inKvstore {
				kvstore |= 1 << len(ports)
			}
			ports = append(ports, uint16(p))
		}
	}
	// The node's own first (a kvstore of many ports does not crowd them
	// out), the metrics listener's last.
	add(cfg.MemberlistPort)
	add(cfg.ProxyPort)
	if cfg.Routing == routing.Tunnel {
		add(routing.VXLANPort)
	}
	addListen := func(l string) {
		if _, port, err := net.SplitHostPort(l); err == nil {
			p, _ := strconv.Atoi(port)
			add(p)
		}
	}
	addListen(cfg.HubbleListen)
	urls := cfg.Etcd.Endpoints
	external := len(urls) > 0
	if len(urls) == 0 {
		urls = []string{cfg.EmbeddedEtcd.ClientURL, cfg.EmbeddedEtcd.PeerURL}
	}
	// An external kvstore's port that speaks TLS at every endpoint naming
	// it (a clustermesh-apiserver's with its bundle), not an embedded
	// etcd's (nothing reaches that one through a NodePort), nor a plain
	// one's: a NodePort to that would give its etcd to any client.
	plain := map[int]bool{}
	var kvPorts []int
	for _, u := range urls {
		pu, err := url.Parse(u)
		if err != nil {
			continue
		}
		if pu.Port() == "" {
			continue // refused by the config's check (kvstoreURL)
		}
		p, _ := strconv.Atoi(pu.Port())
		kvPorts = append(kvPorts, p)
		plain[p] = plain[p] || !external || pu.Scheme != "https"
	}
	for _, p := range kvPorts {
		inKvstore = !plain[p]
		add(p)
	}
	inKvstore = false
	addListen(cfg.PrometheusListen)
	return ports, kvstore
}

// controlPlaneAddrs are the addresses of the kvstore this agent uses
// (endpoints given by IP; an embedded etcd's listeners).
func controlPlaneAddrs(kvEndpoints []string) map[netip.Addr]string {
	out := map[netip.Addr]string{}
	for _, e := range kvEndpoints {
		u, err := url.Parse(e)
		if err != nil {
			continue
		}
		if a, err := netip.ParseAddr(u.Hostname()); err == nil {
			out[a] = "the address of the cluster's kvstore"
		}
	}
	return out
}

// serviceGuards are the service manager's checks: no frontend on a node's
// or the kvstore's address, no backend on the kvstore's.
func serviceGuards(cp map[netip.Addr]string, own []netip.Addr, nodes func() []node.Node) (reserved, controlPlane func(netip.Addr) string) {
	controlPlane = func(a netip.Addr) string { return cp[a] }
	reserved = func(a netip.Addr) string {
		if why := cp[a]; why != "" {
			return why
		}
		for _, o := range own {
			if a == o {
				return "an address of this node"
			}
		}
		for _, n := range nodes() {
			for _, ip := range n.IPs {
				if ip == a.String() {
					return "the address of node " + n.Name
				}
			}
		}
		return ""
	}
	return reserved, controlPlane
}
