// Package endpoint owns the node's endpoints: a network namespace joined to
// the node by a veth pair, with an address from the node's pod CIDR and a
// security identity from its labels. The manager creates and deletes them
// all-or-nothing, persists them in the state dir and restores them after a
// restart without touching the running pods. Kernel I/O sits behind the
// Plumber interface (package veth implements it).
package endpoint

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"time"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/labels"
)

var (
	// ErrNotFound: no such endpoint.
	ErrNotFound = errors.New("endpoint not found")
	// ErrExists: an endpoint for that container and interface already exists.
	ErrExists = errors.New("endpoint already exists")
	// ErrInvalid: the request is malformed.
	ErrInvalid = errors.New("invalid endpoint request")
	// ErrUnavailable: the kvstore did not answer; try again later.
	ErrUnavailable = errors.New("kvstore unavailable")
)

// State of an endpoint.
type State string

const (
	StateReady State = "ready"
	// StateDisconnected: restored from the state dir but its interface is gone.
	StateDisconnected State = "disconnected"
	// StateHeld: restored, but its datapath could not be set up: its host
	// device is held down (no packet passes between the pod and the node)
	// until a later start sets it up, or its DEL removes it.
	StateHeld State = "held"
)

// Endpoint is one pod interface on this node.
type Endpoint struct {
	ID          uint16                   `json:"id"`
	ContainerID string                   `json:"containerID"`
	IfName      string                   `json:"ifName"`
	NetNS       string                   `json:"netns"`
	Network     string                   `json:"network"` // the CNI network name it was created for
	Namespace   string                   `json:"namespace,omitempty"`
	PodName     string                   `json:"podName,omitempty"`
	Labels      labels.Labels            `json:"labels"`
	Identity    identity.NumericIdentity `json:"identity"`
	IPv4        netip.Addr               `json:"ipv4"`
	Gateway     netip.Addr               `json:"gateway"`
	PrefixLen   int                      `json:"prefixLen"`
	MAC         string                   `json:"mac"`
	HostIfName  string                   `json:"hostIfName"`
	HostIfIndex int                      `json:"hostIfIndex"`
	HostMAC     string                   `json:"hostMAC"`
	MTU         int                      `json:"mtu"`
	State       State                    `json:"state"`
	Created     time.Time                `json:"created"`
}

// CreateRequest asks for a new endpoint.
type CreateRequest struct {
	ContainerID string   `json:"containerID"`
	IfName      string   `json:"ifName"`
	NetNS       string   `json:"netns"`
	Network     string   `json:"network,omitempty"` // the CNI network name; DefaultNetwork when empty
	Namespace   string   `json:"namespace,omitempty"`
	PodName     string   `json:"podName,omitempty"`
	Labels      []string `json:"labels,omitempty"`
}

// DefaultNetwork is the network of an endpoint whose request named none,
// and of records written before endpoints recorded their network: the
// name of the network config in deploy/ and the lab.
const DefaultNetwork = "filament"

var (
	networkRe     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$`)
	ifNameRe      = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)
	containerIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$`)
)

// Validate checks the request and returns its label set (the pod's labels
// plus the namespace label when a namespace is given). The labels are the
// workload's own claim (CNI args, POST /v1/endpoints): see CheckWorkloadLabel.
func (r CreateRequest) Validate() (labels.Labels, error) { return r.validate(false) }

// validate is Validate; fromAPIServer says the labels were derived by the
// agent from the Kubernetes API server, which may carry the keys the agent
// derives there (namespace labels, service account).
func (r CreateRequest) validate(fromAPIServer bool) (labels.Labels, error) {
	if !containerIDRe.MatchString(r.ContainerID) {
		return nil, fmt.Errorf("%w: containerID %q: must be 1-255 alphanumerics, '_', '.', '-'", ErrInvalid, r.ContainerID)
	}
	if !ifNameRe.MatchString(r.IfName) {
		return nil, fmt.Errorf("%w: ifName %q: must be 1-15 characters of letters, digits, '_', '.', '-'", ErrInvalid, r.IfName)
	}
	if r.NetNS == "" {
		return nil, fmt.Errorf("%w: netns: a network namespace path is required", ErrInvalid)
	}
	if r.Network != "" && !networkRe.MatchString(r.Network) {
		return nil, fmt.Errorf("%w: network %q: must be 1-255 alphanumerics, '_', '.', '-'", ErrInvalid, r.Network)
	}
	ls, err := labels.ParseList(r.Labels...)
	if err != nil {
		return nil, fmt.Errorf("%w: labels: %v", ErrInvalid, err)
	}
	if n, size := ownLabels(ls); n > MaxLabels || size > MaxLabelBytes {
		return nil, fmt.Errorf("%w: labels: %d labels, %d bytes: at most %d labels and %d bytes", ErrInvalid, n, size, MaxLabels, MaxLabelBytes)
	}
	for _, l := range ls {
		if err := checkLabel(l, fromAPIServer); err != nil {
			return nil, err
		}
	}
	if r.PodName != "" && !ipcache.ValidPodName(r.PodName) {
		return nil, fmt.Errorf("%w: podName %q: must be a Kubernetes object name (at most 253 lowercase alphanumerics, '-', '.')", ErrInvalid, r.PodName)
	}
	if r.Namespace != "" {
		if err := labels.ValidateValue(r.Namespace); err != nil {
			return nil, fmt.Errorf("%w: namespace: %v", ErrInvalid, err)
		}
		if ls, err = ls.With(labels.Label{Source: labels.SourceK8s, Key: labels.KeyNamespace, Value: r.Namespace}); err != nil {
			return nil, fmt.Errorf("%w: labels: %v", ErrInvalid, err)
		}
	}
	return ls, nil
}

// A workload's label set is bounded: it becomes an identity every agent
// stores and matches every selector against, and the kvstore keeps each
// set it ever had for its history (Kubernetes bounds each label, not
// their number: a pod may carry ten thousand within its object's 1.5 MB).
// Until 2026-12-07 nothing bounded it, and a pod relabelled in a loop
// filled the cluster's etcd to its quota with 2 MB identities
// (TestLabelSetBounded).
const (
	MaxLabels     = 256
	MaxLabelBytes = 32 << 10
)

// ownLabels counts the workload's own labels in ls and their bytes in
// canonical form: not those the agent derives from the API server (the
// namespace's labels, the service account), which the namespace's admin
// writes, so that a namespace of many labels keeps no pod of it out.
func ownLabels(ls labels.Labels) (n, size int) {
	for _, l := range ls {
		if strings.HasPrefix(l.Key, kubeDerivedPrefix) {
			continue
		}
		n++
		size += len(l.String()) + 1
	}
	return n, size
}

// Who may set which label. A workload (whatever calls CNI ADD or POST
// /v1/endpoints) claims labels of the sources k8s, container and unspec.
// It may not claim:
//   - reserved and cidr labels: they name the identities Filament gives
//     out itself (reserved:host is identity 1); any is a selector wildcard;
//   - agentKeys, in any source: the namespace label comes from the pod's
//     namespace (K8S_POD_NAMESPACE, the API server) and the cluster label
//     from the agent's configuration, and policies trust both to scope
//     selectors to a namespace or cluster;
//   - keys under kubeDerivedPrefix (io.cilium.k8s.namespace.labels.*,
//     io.cilium.k8s.policy.serviceaccount, ...): the agent derives them
//     from the Kubernetes API server, and only that path may carry them.
var (
	workloadSources = map[string]bool{labels.SourceK8s: true, labels.SourceContainer: true, labels.SourceUnspec: true}
	agentKeys       = map[string]bool{labels.KeyNamespace: true, labels.KeyCluster: true, labels.KeyCiliumCluster: true}
)

const kubeDerivedPrefix = "io.cilium.k8s."

// CheckWorkloadLabel returns an error wrapping ErrInvalid and naming l when
// a workload may not claim l for itself.
func CheckWorkloadLabel(l labels.Label) error { return checkLabel(l, false) }

// AgentOwnedKey reports whether a label key is set by the agent only, so
// that a pod label with that key must not reach an endpoint.
func AgentOwnedKey(key string) bool {
	return agentKeys[key] || strings.HasPrefix(key, kubeDerivedPrefix)
}

func checkLabel(l labels.Label, fromAPIServer bool) error {
	switch {
	case !workloadSources[l.Source]:
		return fmt.Errorf("%w: label %q: source %q is Filament's own; a workload may only set k8s, container or unspec labels", ErrInvalid, l.String(), l.Source)
	case agentKeys[l.Key]:
		return fmt.Errorf("%w: label %q: key %q is set by the agent (the namespace from the pod's namespace, the cluster from the agent's configuration)", ErrInvalid, l.String(), l.Key)
	case !fromAPIServer && strings.HasPrefix(l.Key, kubeDerivedPrefix):
		return fmt.Errorf("%w: label %q: keys under %q are derived from the Kubernetes API server, not set by a workload", ErrInvalid, l.String(), kubeDerivedPrefix)
	}
	return nil
}

// PlumbRequest is what the plumber needs to connect a namespace.
type PlumbRequest struct {
	ContainerID string
	IfName      string
	NetNS       string
	HostIfName  string
	IPv4        netip.Addr
	Gateway     netip.Addr
	MTU         int
}

// PlumbResult is what the plumber made.
type PlumbResult struct {
	MAC         string
	HostIfIndex int
	HostMAC     string
}

// Plumber does the kernel work of endpoints.
type Plumber interface {
	// Setup creates the veth pair, moves one end into the namespace, and
	// configures addresses, routes and sysctls. On error nothing is left behind.
	Setup(ctx context.Context, r PlumbRequest) (PlumbResult, error)
	// Teardown removes the endpoint's devices; a missing device is not an error.
	Teardown(hostIfName string) error
	// Present reports whether the endpoint's host-side device exists.
	Present(hostIfName string) bool
	// SetUp sets the endpoint's host-side device up, with the node's
	// route to the pod's address ip (which a device set down loses), or
	// down (no packet passes between the pod and the node). A missing
	// device is ErrNoDevice.
	SetUp(hostIfName string, ip netip.Addr, up bool) error
}

// ErrNoDevice: the endpoint's host-side device does not exist.
var ErrNoDevice = errors.New("endpoint device not found")

// Identities is what the manager needs of the identity allocator.
type Identities interface {
	Allocate(ctx context.Context, ls labels.Labels) (identity.Identity, bool, error)
	Release(ctx context.Context, ls labels.Labels) error
}

// Hooks let the datapath follow endpoints: EndpointUp runs once the devices
// exist (on create and on restore) and a failure undoes the create;
// EndpointDown runs when an endpoint is deleted.
type Hooks interface {
	EndpointUp(ctx context.Context, ep Endpoint) error
	EndpointDown(ep Endpoint)
}
