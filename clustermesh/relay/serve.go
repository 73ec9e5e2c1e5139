package relay

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/filament-net/filament/agent/api/client"
	"github.com/filament-net/filament/agent/api/types"
	"github.com/filament-net/filament/agent/hubble"
	"github.com/filament-net/filament/agent/hubble/pb/observer"
)

// Serve serves the relay's Observer API on ln until ctx ends.
func (r *Relay) Serve(ctx context.Context, ln net.Listener) error {
	return hubble.ServeGRPC(ctx, ln, nil, func(g *grpc.Server) { observer.RegisterObserverServer(g, r) })
}

// LoopbackHosts refuses requests whose Host is not a loopback address or
// localhost (any port): a web page elsewhere cannot rebind its name to the
// relay's loopback address and read the mesh's flows (DNS rebinding). It
// also refuses what a browser marks as another site's request
// (Sec-Fetch-Site other than same-origin or none) or sends from another
// origin: another site open in the operator's browser could otherwise
// hold the page's follow slots with blind requests (until 2026-12-04).
func LoopbackHosts(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A link from another site to the page itself is followed (a
		// navigation to / loads the page, whose own requests are then
		// same-origin); nothing else of another site's is answered.
		navigation := r.Method == http.MethodGet && r.URL.Path == "/" && r.Header.Get("Sec-Fetch-Mode") == "navigate"
		if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" && !navigation {
			http.Error(w, "the relay answers its own page only", http.StatusForbidden)
			return
		}
		if origin := r.Header.Get("Origin"); origin != "" {
			if u, err := url.Parse(origin); err != nil || u.Host != r.Host || u.Scheme != "http" && u.Scheme != "https" {
				http.Error(w, "the relay answers its own page only", http.StatusForbidden)
				return
			}
		}
		host := r.Host
		if hp, _, err := net.SplitHostPort(host); err == nil {
			host = hp
		}
		if ip, err := netip.ParseAddr(strings.Trim(host, "[]")); host != "localhost" && (err != nil || !ip.IsLoopback()) {
			http.Error(w, "the relay answers requests for localhost or a loopback address only", http.StatusMisdirectedRequest)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// Listen listens on a unix socket (unix:///path, mode 0660) or a loopback
// host:port: the relay serves every flow of the mesh to whoever connects,
// so it serves no other address (what reaches it is the host's to guard).
func Listen(field, addr string) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		ln, err := hubble.ListenUnix(path)
		if err != nil {
			return nil, fmt.Errorf("%w: %s %q: %v", ErrConfig, field, addr, err)
		}
		return ln, nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("%w: %s %q: want unix:///path or a loopback host:port: %v", ErrConfig, field, addr, err)
	}
	if ip, err := netip.ParseAddr(host); host != "localhost" && (err != nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("%w: %s %q: %q is not a loopback address (the relay serves every flow of the mesh without authenticating its clients)", ErrConfig, field, addr, host)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%w: %s %q: %v", ErrConfig, field, addr, err)
	}
	return ln, nil
}

// Status is the mesh as the relay sees it, for the web page: the nodes it
// reads and, with the local agent's API, the connected clusters' sync and
// the node's encryption peers.
type Status struct {
	Cluster    string                  `json:"cluster"`
	Nodes      []NodeStatus            `json:"nodes"`
	Clusters   []types.ClusterStatus   `json:"clusters,omitempty"`
	Encryption *types.EncryptionStatus `json:"encryption,omitempty"`
	Errors     []string                `json:"errors,omitempty"`
}

// NodeStatus is one node as the relay reads it.
type NodeStatus struct {
	Name          string `json:"name"` // cluster/node
	Address       string `json:"address"`
	State         string `json:"state"` // CONNECTED, UNAVAILABLE
	TLSServerName string `json:"tlsServerName"`
	Flows         uint64 `json:"flows"`     // held in its ring
	SeenFlows     uint64 `json:"seenFlows"` // since it started
	Uptime        string `json:"uptime"`
}

// Status gathers the mesh's status; agent is the local agent's API (nil:
// nodes only).
func (r *Relay) Status(ctx context.Context, agent *client.Client) (Status, error) {
	st := Status{Cluster: r.cfg.Cluster}
	nodes, err := r.GetNodes(ctx, &observer.GetNodesRequest{})
	if err != nil {
		return st, err
	}
	for _, n := range nodes.Nodes {
		st.Nodes = append(st.Nodes, NodeStatus{Name: n.Name, Address: n.Address, State: strings.TrimPrefix(n.State.String(), "NODE_"),
			TLSServerName: n.GetTls().GetServerName(), Flows: n.NumFlows, SeenFlows: n.SeenFlows, Uptime: time.Duration(n.UptimeNs).Round(time.Second).String()})
	}
	if agent == nil {
		return st, nil
	}
	if st.Clusters, err = agent.ClusterMesh(ctx); err != nil {
		st.Errors = append(st.Errors, "cluster mesh: "+err.Error())
	}
	if enc, err := agent.Encryption(ctx); err != nil {
		st.Errors = append(st.Errors, "encryption: "+err.Error())
	} else {
		st.Encryption = &enc
	}
	return st, nil
}
