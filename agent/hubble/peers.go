package hubble

import (
	"net/netip"
	"sort"
	"strings"
	"sync"

	"github.com/filament-net/filament/agent/hubble/pb/peer"
	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/crypto/nodeauth"
)

// Peers is what the Peer service announces: every node this agent knows,
// of its cluster and of the clusters it is connected to, named
// cluster/node, at its node address and the Hubble TCP port (every node
// of a mesh serves the API on the same port), with the TLS server name
// its node certificate carries.
type Peers struct {
	mu    sync.Mutex
	port  int
	nodes map[string]netip.Addr // cluster/node → address
	subs  map[chan *peer.ChangeNotification]struct{}
}

// subBuffer is how many changes a Notify stream may be behind before it
// is ended (its client reconnects and starts from the whole set again).
const subBuffer = 256

// NewPeers returns an empty set; it announces nothing until SetPort.
func NewPeers() *Peers {
	return &Peers{nodes: map[string]netip.Addr{}, subs: map[chan *peer.ChangeNotification]struct{}{}}
}

// SetPort sets the TCP port of the nodes' Hubble API.
func (p *Peers) SetPort(port int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.port = port
}

// NodeChanged follows the node registry and the mesh's remote nodes
// (node.Registry's and remote's callback shape).
func (p *Peers) NodeChanged(n node.Node, deleted bool) {
	name := n.Name // a remote cluster's are named cluster/node already
	if !strings.Contains(name, "/") {
		name = n.Cluster + "/" + name
	}
	ip := n.IP()
	p.mu.Lock()
	defer p.mu.Unlock()
	old, had := p.nodes[name]
	var typ peer.ChangeNotificationType
	switch {
	case deleted || !ip.IsValid():
		if !had {
			return
		}
		delete(p.nodes, name)
		typ = peer.ChangeNotificationType_PEER_DELETED
	case !had:
		p.nodes[name] = ip
		typ = peer.ChangeNotificationType_PEER_ADDED
	case old != ip:
		p.nodes[name] = ip
		typ = peer.ChangeNotificationType_PEER_UPDATED
	default:
		return
	}
	if p.port == 0 {
		return
	}
	cn := p.notification(name, p.nodes[name], typ)
	for ch := range p.subs {
		select {
		case ch <- cn:
		default: // too far behind: its stream ends
			delete(p.subs, ch)
			close(ch)
		}
	}
}

// notification announces name at ip (p.mu held).
func (p *Peers) notification(name string, ip netip.Addr, typ peer.ChangeNotificationType) *peer.ChangeNotification {
	cn := &peer.ChangeNotification{Name: name, Type: typ}
	if typ != peer.ChangeNotificationType_PEER_DELETED {
		cn.Address = netip.AddrPortFrom(ip, uint16(p.port)).String()
	}
	if cluster, node, ok := splitName(name); ok {
		cn.Tls = &peer.TLS{ServerName: nodeauth.ServerName(cluster, node)}
	}
	return cn
}

// subscribe returns the whole set (sorted by name) and a channel of the
// changes after it; cancel ends the subscription. ok is false before
// SetPort (no TCP API to announce).
func (p *Peers) subscribe() (all []*peer.ChangeNotification, changes <-chan *peer.ChangeNotification, cancel func(), ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.port == 0 {
		return nil, nil, nil, false
	}
	names := make([]string, 0, len(p.nodes))
	for name := range p.nodes {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		all = append(all, p.notification(name, p.nodes[name], peer.ChangeNotificationType_PEER_ADDED))
	}
	ch := make(chan *peer.ChangeNotification, subBuffer)
	p.subs[ch] = struct{}{}
	return all, ch, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if _, ok := p.subs[ch]; ok {
			delete(p.subs, ch)
			close(ch)
		}
	}, true
}

// splitName splits cluster/node.
func splitName(name string) (cluster, node string, ok bool) {
	cluster, node, ok = strings.Cut(name, "/")
	return cluster, node, ok && cluster != "" && node != ""
}
