// Package lab owns filament-lab: a local lab in the spirit of kind where
// nodes and pods are network namespaces on one machine. Each node runs its
// own filament-agent (own state dir, API socket and embedded etcd) inside
// its namespace; pods are namespaces wired by filament-cni exactly as a
// container runtime would invoke it. Everything a lab makes is recorded in
// its state file so that `down` removes all of it.
package lab

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
)

// Root is where labs keep their state (one directory per lab).
const Root = "/var/run/filament-lab"

var (
	// ErrInvalid: a bad name or argument.
	ErrInvalid = errors.New("invalid lab request")
	// ErrNotFound: no such lab, node or pod.
	ErrNotFound = errors.New("not found")
	// ErrExists: the lab or pod already exists.
	ErrExists = errors.New("already exists")
)

var nameRe = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,14}[a-z0-9])?$`)

func validName(kind, s string) error {
	if !nameRe.MatchString(s) {
		return fmt.Errorf("%w: %s name %q: 1-16 lowercase letters, digits and '-'", ErrInvalid, kind, s)
	}
	return nil
}

// Node is one lab node.
type Node struct {
	Name     string `json:"name"`    // n<j>, or c<i>/n<j> in a lab of several clusters
	Cluster  string `json:"cluster"` // name of its cluster
	NetNS    string `json:"netns"`
	IP       string `json:"ip"` // underlay address
	PodCIDR  string `json:"podCIDR"`
	StateDir string `json:"stateDir"`
	Socket   string `json:"socket"`
	LogFile  string `json:"logFile"`
	PID      int    `json:"pid"`
	Running  bool   `json:"running"`
}

// Pod is one lab pod.
type Pod struct {
	Name        string   `json:"name"`
	Node        string   `json:"node"`
	NetNS       string   `json:"netns"`
	ContainerID string   `json:"containerID"`
	IP          string   `json:"ip"`
	Labels      []string `json:"labels"`
	// Namespace is the pod's Kubernetes namespace ("default" when empty).
	Namespace string `json:"namespace,omitempty"`
	// Servers are the PIDs of `filament-lab pod serve` servers in the pod.
	Servers []int `json:"servers,omitempty"`
}

// Cluster is one cluster of the lab: an underlay bridge joining its nodes
// and its kvstore (filament-clustermesh-apiserver, serving the cluster's
// clustermesh bundle over mutual TLS).
type Cluster struct {
	Name       string `json:"name"`
	ID         uint32 `json:"id"`
	Index      int    `json:"index"`  // underlay 172.30.<index>.0/24
	Pool       string `json:"pool"`   // pod CIDR pool
	Bundle     string `json:"bundle"` // clustermesh bundle directory
	Kvstore    string `json:"kvstore"`
	KvstorePID int    `json:"kvstorePID"`
	// Relay is the cluster's Hubble relay once started (StartRelay).
	Relay *Relay `json:"relay,omitempty"`
}

// Relay is a cluster's filament-relay: it runs in a node's namespace and
// serves the Observer API on that namespace's loopback.
type Relay struct {
	Node   string `json:"node"`
	NetNS  string `json:"netns"`
	Listen string `json:"listen"` // host:port in NetNS: the Observer API
	Web    string `json:"web"`    // host:port in NetNS: the web page
	PID    int    `json:"pid"`
	Log    string `json:"log"`
}

// External is a host outside the cluster (a namespace joined to a node by a
// veth, routed through the node), to test world and CIDR policy.
type External struct {
	Name  string `json:"name"`
	Node  string `json:"node"`
	NetNS string `json:"netns"`
	IP    string `json:"ip"`
}

// Host is an "outside" host on a cluster's underlay (standing in for an EC2
// instance or a CIDR peer): a namespace owning IP, which every node of the
// cluster routes through the host's underlay address, so that pods reach it
// as world (no masquerade: it sees and answers the pods' addresses).
type Host struct {
	Name       string `json:"name"`
	Cluster    string `json:"cluster"`
	NetNS      string `json:"netns"`
	IP         string `json:"ip"`         // the address it stands for
	UnderlayIP string `json:"underlayIP"` // its address on the cluster's underlay
}

// Lab is the recorded state of one lab.
type Lab struct {
	Name      string   `json:"name"`
	BinDir    string   `json:"binDir"`
	AgentArgs []string `json:"agentArgs,omitempty"`
	// NodeAgentArgs replace AgentArgs for the nodes they name.
	NodeAgentArgs map[string][]string `json:"nodeAgentArgs,omitempty"`
	// NodeBinDir replaces BinDir for the nodes it names (agent, CNI and
	// CLI of another version: a cluster mid-upgrade).
	NodeBinDir map[string]string `json:"nodeBinDir,omitempty"`
	Routing    string            `json:"routing"`
	PodPrefix  int               `json:"podPrefixLen"`
	Clusters   []Cluster         `json:"clusters"`
	Created    string            `json:"created"`
	Nodes      []Node            `json:"nodes"`
	Pods       []Pod             `json:"pods"`
	Externals  []External        `json:"externals,omitempty"`
	Hosts      []Host            `json:"hosts,omitempty"`
	// ClusterMeshCache: each cluster's apiserver caches the clusters it is
	// connected to (--clustermesh-cache <bundle>/remotes), for agents run
	// with --clustermesh-cache.
	ClusterMeshCache bool `json:"clusterMeshCache,omitempty"`
	// Partitions between clusters ("c1|c2", Partition and Heal).
	Partitions []string `json:"partitions,omitempty"`

	dir string
}

// Options of Up.
type Options struct {
	Name   string
	Nodes  int
	BinDir string // where filament-agent, filament-cni and filament live
	// PodPrefixLen of each node's pod CIDR 10.244.<node>.0/<len> (default 24).
	PodPrefixLen int
	// AgentArgs are extra flags for every node's agent.
	AgentArgs []string
	// NodeAgentArgs replace AgentArgs for the nodes they name (a mixed
	// cluster, e.g. one node without encryption).
	NodeAgentArgs map[string][]string
	// NodeBinDir replaces BinDir for the nodes it names ("n2" or
	// "c1/n2"): their agent, CNI plugin and CLI come from there (a cluster
	// mid-upgrade, with some nodes on another version).
	NodeBinDir map[string]string
	// Routing between nodes: tunnel (default) or native.
	Routing string
	// Clusters: with more than one, cluster i is c<i> (ID i) with nodes
	// c<i>/n1..n<Nodes>, and a router joins the clusters' underlays.
	Clusters int
	// ClusterIDs overrides the IDs of the clusters (tests of clashes).
	ClusterIDs []uint32
	// ClusterMeshCache runs each cluster's apiserver as a cache of the
	// clusters it is connected to (see Lab.ClusterMeshCache).
	ClusterMeshCache bool
}

func labDir(name string) string { return filepath.Join(Root, name) }

// bpffs is the lab's bpf filesystem; node nI pins under <bpffs>/filament/nI.
func (l *Lab) bpffs() string { return filepath.Join(l.dir, "bpffs") }

// Node returns the named node.
func (l *Lab) Node(name string) (*Node, error) {
	for i := range l.Nodes {
		if l.Nodes[i].Name == name {
			return &l.Nodes[i], nil
		}
	}
	return nil, fmt.Errorf("%w: node %q in lab %q", ErrNotFound, name, l.Name)
}
