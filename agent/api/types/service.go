package types

import (
	"fmt"
	"net/netip"
)

// Service is one service of one cluster, in a Kubernetes-like shape (PUT
// /v1/services takes it as YAML or JSON and answers with it).
type Service struct {
	APIVersion string          `json:"apiVersion,omitempty"`
	Kind       string          `json:"kind,omitempty"`
	Metadata   ServiceMetadata `json:"metadata"`
	Spec       ServiceSpec     `json:"spec"`
	// Backends of the service; the agent fills Cluster.
	Backends []Backend `json:"backends,omitempty"`
}

// Key is namespace/name.
func (s *Service) Key() string { return s.Metadata.Namespace + "/" + s.Metadata.Name }

// ServiceMetadata names a service.
type ServiceMetadata struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// ServiceSpec is a service's frontends and load balancing.
type ServiceSpec struct {
	// Type: ClusterIP (default) or NodePort.
	Type      string        `json:"type,omitempty"`
	ClusterIP string        `json:"clusterIP,omitempty"`
	Ports     []ServicePort `json:"ports"`
	// SessionAffinity: None (default) or ClientIP.
	SessionAffinity       string                 `json:"sessionAffinity,omitempty"`
	SessionAffinityConfig *SessionAffinityConfig `json:"sessionAffinityConfig,omitempty"`
	// LoadBalancerAlgorithm: random or maglev (default: the agent's).
	LoadBalancerAlgorithm string `json:"loadBalancerAlgorithm,omitempty"`
}

// SessionAffinityConfig configures ClientIP affinity.
type SessionAffinityConfig struct {
	ClientIP *ClientIPConfig `json:"clientIP,omitempty"`
}

// ClientIPConfig is the ClientIP affinity's timeout.
type ClientIPConfig struct {
	TimeoutSeconds *int32 `json:"timeoutSeconds,omitempty"`
}

// ServicePort is one port of a service.
type ServicePort struct {
	Name       string `json:"name,omitempty"`
	Protocol   string `json:"protocol,omitempty"` // TCP (default) or UDP
	Port       uint16 `json:"port"`
	TargetPort uint16 `json:"targetPort,omitempty"` // default: Port
	NodePort   uint16 `json:"nodePort,omitempty"`   // 30000-32767; 0: this port has none
}

// Backend is one backend of a service.
type Backend struct {
	IP string `json:"ip"`
	// Ports by service port name, when it differs from the targetPort.
	Ports   map[string]uint16 `json:"ports,omitempty"`
	State   string            `json:"state,omitempty"` // active (default), terminating, maintenance
	Node    string            `json:"node,omitempty"`
	Cluster string            `json:"cluster,omitempty"`
}

// ServiceOptions are a service's cluster-mesh options.
type ServiceOptions struct {
	Global   bool   `json:"global"`
	Shared   bool   `json:"shared"`
	Affinity string `json:"affinity"`
	// Failover: "graded" (service.filament.io/failover), or "" for the
	// affinity's all-or-nothing failover.
	Failover string `json:"failover,omitempty"`
}

// ServiceStatus is one service as the node load-balances it (GET
// /v1/services).
type ServiceStatus struct {
	Namespace       string           `json:"namespace"`
	Name            string           `json:"name"`
	Type            string           `json:"type"`
	Options         ServiceOptions   `json:"options"`
	Algorithm       string           `json:"algorithm"`
	AffinityTimeout uint32           `json:"sessionAffinityTimeout,omitempty"`
	Clusters        []string         `json:"clusters"`
	Frontends       []FrontendStatus `json:"frontends"`
	Spec            *Service         `json:"service"`
}

// Frontend is one address a service answers on.
type Frontend struct {
	IP       netip.Addr `json:"ip"`
	Port     uint16     `json:"port"`
	Protocol string     `json:"protocol"`
	Type     string     `json:"type"` // ClusterIP or NodePort
	PortName string     `json:"portName,omitempty"`
}

func (f Frontend) String() string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(f.IP, f.Port), f.Protocol)
}

// FrontendStatus is a frontend with its backends.
type FrontendStatus struct {
	Frontend
	Backends []BackendView `json:"backends"`
	// Split: how a graded service divides new connections between the
	// clusters, as the datapath's table has it.
	Split *Split `json:"split,omitempty"`
}

// Split is a graded frontend's division of new connections.
type Split struct {
	// LocalHealth: the local level's min(1, 1.4 × healthy/total);
	// RemoteHealth: the remote level's, its healthiest cluster's.
	LocalHealth  float64 `json:"localHealth"`
	RemoteHealth float64 `json:"remoteHealth"`
	// Clusters: the local cluster first, then the remote ones by name.
	Clusters []ClusterShare `json:"clusters"`
	// Slots: size of the datapath's selection table (0: connections refused).
	Slots int `json:"slots"`
}

// ClusterShare is one cluster's part of a Split.
type ClusterShare struct {
	Cluster string `json:"cluster"`
	Healthy int    `json:"healthy"`
	Total   int    `json:"total"`
	// Share of new connections by the rule (a fraction).
	Share float64 `json:"share"`
	// Slots of the table its backends hold (Slots/Split.Slots: realised share).
	Slots int `json:"slots"`
}

// BackendView is a backend of a frontend as the node uses it.
type BackendView struct {
	Addr    netip.AddrPort `json:"addr"`
	Cluster string         `json:"cluster"`
	Node    string         `json:"node,omitempty"`
	State   string         `json:"state"`
	// Healthy: its node is alive and its cluster connected.
	Healthy bool `json:"healthy"`
	// Preferred: new connections go to it (the datapath's slots).
	Preferred bool `json:"preferred"`
}
