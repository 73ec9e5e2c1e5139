// Package service owns the service model: frontends (a ClusterIP and
// NodePorts) with their backends, parsed from YAML and validated with
// errors that name the field, the Cilium cluster-mesh annotations (global,
// shared, affinity), and the choice of which backends new connections use
// (Select) once clusters are merged and dead nodes are taken out.
package service

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/filament-net/filament/agent/service/maglev"
)

// ErrInvalid wraps every validation error.
var ErrInvalid = errors.New("invalid service")

// Backend states.
const (
	StateActive      = "active"
	StateTerminating = "terminating"
	StateMaintenance = "maintenance"
)

// Affinity of a global service.
const (
	AffinityNone   = "none"
	AffinityLocal  = "local"
	AffinityRemote = "remote"
)

// Annotations honoured (the current Cilium ones and their older names).
const (
	AnnotationGlobal         = "service.cilium.io/global"
	AnnotationShared         = "service.cilium.io/shared"
	AnnotationAffinity       = "service.cilium.io/affinity"
	AnnotationGlobalLegacy   = "io.cilium/global-service"
	AnnotationSharedLegacy   = "io.cilium/shared-service"
	AnnotationAffinityLegacy = "io.cilium/service-affinity"
)

// AnnotationFailover is Filament's own: "graded" makes a global service
// with affinity local spill over to the remote clusters gradually (see
// GradedSplit) instead of all at once when its last local backend goes.
// Absent, the Cilium annotations keep their exact meaning.
const AnnotationFailover = "service.filament.io/failover"

// Honoured lists every annotation the service model reads: the only ones
// a service stored from a Kubernetes Service object keeps.
var Honoured = []string{AnnotationGlobal, AnnotationShared, AnnotationAffinity,
	AnnotationGlobalLegacy, AnnotationSharedLegacy, AnnotationAffinityLegacy, AnnotationFailover}

// FailoverGraded is the one value of AnnotationFailover.
const FailoverGraded = "graded"

// SourceAnnotation on a stored service says what made it; the agents'
// Kubernetes watchers set it to SourceKubernetes on the services they
// store from Service objects (and remove only those), and the API refuses
// it on a service from a user. An annotation rather than a field: agents
// from before it read stored services strictly, and ignore annotations
// they do not know.
const SourceAnnotation = "filament.io/source"

// UIDAnnotation on a service stored from a Kubernetes Service object is
// the object's UID: a Service deleted and made again under its name is
// stored again (a new value and revision) even when nothing else changed,
// since a store of a value already stored writes nothing (Manager.put).
const UIDAnnotation = "filament.io/uid"

// SourceKubernetes: made from a Kubernetes Service object.
const SourceKubernetes = "kubernetes"

// Service is one service of one cluster, in a Kubernetes-like shape.
type Service struct {
	APIVersion string   `json:"apiVersion,omitempty"`
	Kind       string   `json:"kind,omitempty"`
	Metadata   Metadata `json:"metadata"`
	Spec       Spec     `json:"spec"`
	// Backends of the service; the agent fills Cluster.
	Backends []Backend `json:"backends,omitempty"`
}

// Metadata names the service.
type Metadata struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// Spec is the frontend side.
type Spec struct {
	// Type: ClusterIP (default) or NodePort.
	Type      string `json:"type,omitempty"`
	ClusterIP string `json:"clusterIP,omitempty"`
	Ports     []Port `json:"ports"`
	// SessionAffinity: None (default) or ClientIP.
	SessionAffinity       string                 `json:"sessionAffinity,omitempty"`
	SessionAffinityConfig *SessionAffinityConfig `json:"sessionAffinityConfig,omitempty"`
	// LoadBalancerAlgorithm: random or maglev (default: the agent's).
	LoadBalancerAlgorithm string `json:"loadBalancerAlgorithm,omitempty"`
}

// SessionAffinityConfig is as in Kubernetes.
type SessionAffinityConfig struct {
	ClientIP *ClientIPConfig `json:"clientIP,omitempty"`
}

// ClientIPConfig holds the affinity timeout.
type ClientIPConfig struct {
	TimeoutSeconds *int32 `json:"timeoutSeconds,omitempty"`
}

// Port is one service port.
type Port struct {
	Name       string `json:"name,omitempty"`
	Protocol   string `json:"protocol,omitempty"` // TCP (default) or UDP
	Port       uint16 `json:"port"`
	TargetPort uint16 `json:"targetPort,omitempty"` // default: Port
	NodePort   uint16 `json:"nodePort,omitempty"`   // 30000-32767; 0: this port has none
}

// Backend is one backend address.
type Backend struct {
	IP string `json:"ip"`
	// Ports by service port name, when it differs from the targetPort.
	Ports   map[string]uint16 `json:"ports,omitempty"`
	State   string            `json:"state,omitempty"` // active (default), terminating, maintenance
	Node    string            `json:"node,omitempty"`
	Cluster string            `json:"cluster,omitempty"`
}

// DefaultAffinityTimeout is Kubernetes' ClientIP default (3 hours).
const DefaultAffinityTimeout = 10800

// Key is namespace/name.
func (s *Service) Key() string { return s.Metadata.Namespace + "/" + s.Metadata.Name }

// Options are the cluster-mesh annotations of a service.
type Options struct {
	Global   bool   `json:"global"`
	Shared   bool   `json:"shared"`
	Affinity string `json:"affinity"`
	// Failover: "graded", or "" for the Cilium affinity's all-or-nothing.
	Failover string `json:"failover,omitempty"`
}

func annotation(a map[string]string, names ...string) (string, string, bool) {
	for _, n := range names {
		if v, ok := a[n]; ok {
			return n, v, true
		}
	}
	return "", "", false
}

// Options reads the annotations; Validate has checked them.
func (s *Service) Options() Options {
	o, _ := s.options()
	return o
}

func (s *Service) options() (Options, error) {
	a := s.Metadata.Annotations
	o := Options{Affinity: AffinityNone}
	if n, v, ok := annotation(a, AnnotationGlobal, AnnotationGlobalLegacy); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return o, fmt.Errorf("metadata.annotations[%s]: %q is not true or false", n, v)
		}
		o.Global = b
	}
	o.Shared = o.Global
	if n, v, ok := annotation(a, AnnotationShared, AnnotationSharedLegacy); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return o, fmt.Errorf("metadata.annotations[%s]: %q is not true or false", n, v)
		}
		o.Shared = b && o.Global
	}
	if n, v, ok := annotation(a, AnnotationAffinity, AnnotationAffinityLegacy); ok {
		switch strings.ToLower(v) {
		case AffinityNone, AffinityLocal, AffinityRemote:
			o.Affinity = strings.ToLower(v)
		default:
			return o, fmt.Errorf("metadata.annotations[%s]: %q is not local, remote or none", n, v)
		}
	}
	if v, ok := a[AnnotationFailover]; ok {
		f := fmt.Sprintf("metadata.annotations[%s]", AnnotationFailover)
		switch {
		case v != FailoverGraded:
			return o, fmt.Errorf("%s: %q is not graded (remove the annotation for the all-or-nothing failover of %s: local)", f, v, AnnotationAffinity)
		case !o.Global:
			return o, fmt.Errorf("%s: %q needs a global service (%s: \"true\")", f, v, AnnotationGlobal)
		case o.Affinity != AffinityLocal:
			return o, fmt.Errorf("%s: %q grades the failover of affinity local; the service's %s is %q", f, v, AnnotationAffinity, o.Affinity)
		}
		o.Failover = FailoverGraded
	}
	return o, nil
}

// AffinityTimeout is the ClientIP session affinity timeout in seconds (0: none).
func (s *Service) AffinityTimeout() uint32 {
	if s.Spec.SessionAffinity != "ClientIP" {
		return 0
	}
	if c := s.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
		return uint32(*c.ClientIP.TimeoutSeconds)
	}
	return DefaultAffinityTimeout
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// nodeNameRE is a DNS subdomain (RFC 1123), a Kubernetes node's name.
var nodeNameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// Protocol of a port as upper-case TCP or UDP.
func (p Port) Proto() string {
	if p.Protocol == "" {
		return "TCP"
	}
	return strings.ToUpper(p.Protocol)
}

// Target is the backend port for p when the backend does not name one.
func (p Port) Target() uint16 {
	if p.TargetPort != 0 {
		return p.TargetPort
	}
	return p.Port
}

// FoldPorts moves each named service port that every backend's port map
// gives at one number into the port's TargetPort, and leaves a backend's
// map only the ports where it differs (none: no map), so a service of many
// ports stores them once, not once a backend (how agents since 2026-12-07
// store a Kubernetes Service; BackendPort answers as before for every
// backend and port). It tells whether it changed s.
func (s *Service) FoldPorts() bool {
	changed := false
	for i, p := range s.Spec.Ports {
		if p.Name == "" || len(s.Backends) == 0 {
			continue
		}
		v := s.Backends[0].Ports[p.Name]
		if v == 0 {
			continue
		}
		same := true
		for _, b := range s.Backends[1:] {
			if b.Ports[p.Name] != v {
				same = false
				break
			}
		}
		if !same {
			continue
		}
		s.Spec.Ports[i].TargetPort = v
		for j := range s.Backends {
			delete(s.Backends[j].Ports, p.Name)
		}
		changed = true
	}
	for j := range s.Backends {
		if s.Backends[j].Ports != nil && len(s.Backends[j].Ports) == 0 {
			s.Backends[j].Ports = nil
			changed = true
		}
	}
	return changed
}

// KubernetesForm puts a service stored from a Kubernetes Service in the
// form agents since 2026-12-07 store it: only the annotations the model
// reads (Honoured, the source and the UID), and its ports folded
// (FoldPorts). It tells whether it changed s; other services are left.
func (s *Service) KubernetesForm() bool {
	if s.Metadata.Annotations[SourceAnnotation] != SourceKubernetes {
		return false
	}
	changed := false
	for k := range s.Metadata.Annotations {
		if k != SourceAnnotation && k != UIDAnnotation && !slices.Contains(Honoured, k) {
			delete(s.Metadata.Annotations, k)
			changed = true
		}
	}
	return s.FoldPorts() || changed
}

// BackendPort is the port of backend b for service port p.
func (b Backend) BackendPort(p Port) uint16 {
	if v, ok := b.Ports[p.Name]; ok && p.Name != "" {
		return v
	}
	return p.Target()
}

// Validate checks everything and fills defaults (namespace, state). The
// error names the field and value.
func (s *Service) Validate() error {
	if s.APIVersion != "" && s.APIVersion != "filament.io/v1" && s.APIVersion != "v1" {
		return invalid("apiVersion %q: want filament.io/v1", s.APIVersion)
	}
	if s.Kind != "" && s.Kind != "Service" {
		return invalid("kind %q: want Service", s.Kind)
	}
	if !nameRE.MatchString(s.Metadata.Name) {
		return invalid("metadata.name %q: want 1-63 of a-z, 0-9 and '-'", s.Metadata.Name)
	}
	if s.Metadata.Namespace == "" {
		s.Metadata.Namespace = "default"
	}
	if !nameRE.MatchString(s.Metadata.Namespace) {
		return invalid("metadata.namespace %q: want 1-63 of a-z, 0-9 and '-'", s.Metadata.Namespace)
	}
	if _, err := s.options(); err != nil {
		return invalid("%v", err)
	}
	switch s.Spec.Type {
	case "":
		s.Spec.Type = "ClusterIP"
	case "ClusterIP", "NodePort":
	default:
		return invalid("spec.type %q: want ClusterIP or NodePort", s.Spec.Type)
	}
	if s.Spec.ClusterIP != "" {
		ip, err := netip.ParseAddr(s.Spec.ClusterIP)
		if err != nil || !ip.Is4() || ip.IsUnspecified() {
			return invalid("spec.clusterIP %q: not an IPv4 address", s.Spec.ClusterIP)
		}
		if why := SpecialAddr(ip); why != "" {
			return invalid("spec.clusterIP %s: %s", ip, why)
		}
	} else if s.Spec.Type == "ClusterIP" {
		return invalid("spec.clusterIP: required for type ClusterIP")
	}
	if len(s.Spec.Ports) == 0 {
		return invalid("spec.ports: at least one port is required")
	}
	seen := map[string]bool{}
	nodePorts := map[string]bool{}
	names := map[string]bool{}
	for i, p := range s.Spec.Ports {
		f := fmt.Sprintf("spec.ports[%d]", i)
		if p.Proto() != "TCP" && p.Proto() != "UDP" {
			return invalid("%s.protocol %q: want TCP or UDP", f, p.Protocol)
		}
		s.Spec.Ports[i].Protocol = p.Proto()
		if p.Port == 0 {
			return invalid("%s.port %d: must be 1-65535", f, p.Port)
		}
		if p.NodePort != 0 && s.Spec.Type != "NodePort" {
			return invalid("%s.nodePort %d: only for type NodePort", f, p.NodePort)
		}
		if p.NodePort != 0 && (p.NodePort < 30000 || p.NodePort > 32767) {
			return invalid("%s.nodePort %d: want 30000-32767", f, p.NodePort)
		}
		if len(s.Spec.Ports) > 1 && p.Name == "" {
			return invalid("%s.name: required when there is more than one port", f)
		}
		if names[p.Name] {
			return invalid("%s.name %q: duplicate", f, p.Name)
		}
		names[p.Name] = true
		k := fmt.Sprintf("%d/%s", p.Port, p.Proto())
		if seen[k] {
			return invalid("%s: port %s appears twice", f, k)
		}
		seen[k] = true
		if p.NodePort != 0 {
			k := fmt.Sprintf("%d/%s", p.NodePort, p.Proto())
			if nodePorts[k] {
				return invalid("%s.nodePort %s: appears twice", f, k)
			}
			nodePorts[k] = true
		}
	}
	if s.Spec.Type == "NodePort" && !slices.ContainsFunc(s.Spec.Ports, func(p Port) bool { return p.NodePort != 0 }) {
		return invalid("spec.ports[0].nodePort 0: type NodePort needs a nodePort (30000-32767) on at least one port")
	}
	switch s.Spec.SessionAffinity {
	case "", "None", "ClientIP":
	default:
		return invalid("spec.sessionAffinity %q: want None or ClientIP", s.Spec.SessionAffinity)
	}
	if c := s.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
		if t := *c.ClientIP.TimeoutSeconds; t < 1 || t > 86400 {
			return invalid("spec.sessionAffinityConfig.clientIP.timeoutSeconds %d: want 1-86400", t)
		}
	}
	switch s.Spec.LoadBalancerAlgorithm {
	case "", "random", "maglev":
	default:
		return invalid("spec.loadBalancerAlgorithm %q: want random or maglev", s.Spec.LoadBalancerAlgorithm)
	}
	if len(s.Backends) > MaxBackends {
		return invalid("backends: %d, at most %d", len(s.Backends), MaxBackends)
	}
	addrs := map[string]bool{}
	for i, b := range s.Backends {
		f := fmt.Sprintf("backends[%d]", i)
		ip, err := netip.ParseAddr(b.IP)
		if err != nil || !ip.Is4() || ip.IsUnspecified() {
			return invalid("%s.ip %q: not an IPv4 address", f, b.IP)
		}
		if why := SpecialAddr(ip); why != "" {
			return invalid("%s.ip %s: %s", f, ip, why)
		}
		if addrs[b.IP] {
			return invalid("%s.ip %s: duplicate", f, b.IP)
		}
		addrs[b.IP] = true
		// A Kubernetes node name (a DNS subdomain): until 2026-12-07 any
		// bytes, and a remote cluster's escape sequences reached the
		// operator's terminal through service list.
		if b.Node != "" && (len(b.Node) > 253 || !nodeNameRE.MatchString(b.Node)) {
			return invalid("%s.node %q: not a node name (at most 253 lowercase letters, digits, '-' and '.')", f, b.Node)
		}
		for name, port := range b.Ports {
			if !names[name] || name == "" {
				return invalid("%s.ports[%s]: no service port of that name", f, name)
			}
			if port == 0 {
				return invalid("%s.ports[%s] %d: must be 1-65535", f, name, port)
			}
		}
		switch b.State {
		case "":
			s.Backends[i].State = StateActive
		case StateActive, StateTerminating, StateMaintenance:
		default:
			return invalid("%s.state %q: want active, terminating or maintenance", f, b.State)
		}
	}
	return nil
}

// SpecialAddr says why ip can be neither a frontend nor a backend ("" if
// it can): loopback, multicast, link-local, unspecified ("this network")
// and broadcast addresses belong to every host, not to a service.
func SpecialAddr(ip netip.Addr) string {
	switch {
	case ip.IsLoopback():
		return "a loopback address"
	case ip.IsMulticast():
		return "a multicast address"
	case ip.IsLinkLocalUnicast():
		return "a link-local address"
	case ip.Is4() && ip.As4()[0] == 0:
		return "in 0.0.0.0/8 (this network)"
	case ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "the broadcast address"
	}
	return ""
}

// Parse reads one service from YAML or JSON, rejecting unknown fields, and
// validates it.
func Parse(data []byte) (*Service, error) {
	var s Service
	if err := yaml.UnmarshalStrict(data, &s); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return &s, nil
}

// Frontend is one address a service answers on.
type Frontend struct {
	IP       netip.Addr `json:"ip"`
	Port     uint16     `json:"port"`
	Protocol string     `json:"protocol"`
	Type     string     `json:"type"` // ClusterIP or NodePort
	PortName string     `json:"portName,omitempty"`
	// port is the service port the frontend belongs to.
	port Port
}

func (f Frontend) String() string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(f.IP, f.Port), f.Protocol)
}

// Frontends lists the frontends of s on a node with the given addresses
// (NodePorts answer on every one of them).
func (s *Service) Frontends(nodeIPs []netip.Addr) []Frontend {
	var out []Frontend
	cip, _ := netip.ParseAddr(s.Spec.ClusterIP)
	for _, p := range s.Spec.Ports {
		if cip.IsValid() {
			out = append(out, Frontend{IP: cip, Port: p.Port, Protocol: p.Proto(), Type: "ClusterIP", PortName: p.Name, port: p})
		}
		if p.NodePort != 0 {
			for _, ip := range nodeIPs {
				out = append(out, Frontend{IP: ip, Port: p.NodePort, Protocol: p.Proto(), Type: "NodePort", PortName: p.Name, port: p})
			}
		}
	}
	return out
}

// Algorithm returns the service's algorithm, or def when it names none.
func (s *Service) Algorithm(def string) string {
	if s.Spec.LoadBalancerAlgorithm != "" {
		return s.Spec.LoadBalancerAlgorithm
	}
	return def
}

// ValidAlgorithm checks an agent-wide default.
func ValidAlgorithm(a string) error {
	if a != "random" && a != "maglev" {
		return fmt.Errorf("load balancer algorithm %q: want random or maglev", a)
	}
	return nil
}

// MaglevTable builds the Maglev table of a backend list (names ip:port).
func MaglevTable(backends []netip.AddrPort, m uint32) ([]int32, error) {
	names := make([]string, len(backends))
	for i, b := range backends {
		names[i] = b.String()
	}
	return maglev.Build(names, m)
}

// sortBackends orders views by cluster, then address, so slots and Maglev
// tables do not depend on the order backends were listed in.
func sortBackends(v []BackendView) {
	slices.SortFunc(v, func(a, b BackendView) int {
		if c := strings.Compare(a.Cluster, b.Cluster); c != 0 {
			return c
		}
		return a.Addr.Compare(b.Addr)
	})
}
