package endpoint

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipam"
	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/labels"
	"github.com/filament-net/filament/internal/atomicfile"
)

// Manager owns the endpoints of one node.
type Manager struct {
	dir     string
	pool    *ipam.Pool
	ids     Identities
	plumber Plumber
	hooks   Hooks
	mtu     int
	kvWait  time.Duration
	// podLabels, when set (Kubernetes mode), gives a pod's labels from
	// the API server; they replace the labels of the CNI request.
	podLabels func(ctx context.Context, namespace, pod string) ([]string, bool)

	mu        sync.Mutex
	endpoints map[uint16]*Endpoint
	byIP      map[netip.Addr]uint16 // the endpoints by IPv4 address
	// lastID is the endpoint ID handed out last (after a restart, the
	// highest restored): IDs go round from it, so a deleted endpoint's
	// comes back only after all the others.
	lastID uint16
}

// Config of a Manager.
type Config struct {
	StateDir   string // endpoints are kept in StateDir/endpoints
	Pool       *ipam.Pool
	Identities Identities
	Plumber    Plumber
	Hooks      Hooks // optional
	MTU        int
	// PodLabels, when set, gives a pod's labels (Kubernetes mode).
	PodLabels func(ctx context.Context, namespace, pod string) ([]string, bool)
	// KVStoreTimeout bounds the identity allocation of a create; past it
	// the create fails with ErrUnavailable (default DefaultKVStoreTimeout).
	KVStoreTimeout time.Duration
}

// DefaultKVStoreTimeout is how long a create waits for the kvstore.
const DefaultKVStoreTimeout = 10 * time.Second

// NewManager returns a manager with no endpoints; call Restore to load the state dir.
func NewManager(c Config) (*Manager, error) {
	dir := filepath.Join(c.StateDir, "endpoints")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("endpoint state dir: %w", err)
	}
	if c.MTU == 0 {
		c.MTU = 1500
	}
	if c.KVStoreTimeout <= 0 {
		c.KVStoreTimeout = DefaultKVStoreTimeout
	}
	m := &Manager{dir: dir, pool: c.Pool, ids: c.Identities, plumber: c.Plumber, hooks: c.Hooks, mtu: c.MTU, kvWait: c.KVStoreTimeout, podLabels: c.PodLabels, endpoints: map[uint16]*Endpoint{}, byIP: map[netip.Addr]uint16{}}
	if r, ok := c.Identities.(renumberer); ok {
		r.OnRenumber(func(ls labels.Labels, old, new identity.NumericIdentity) {
			m.Renumber(context.Background(), ls, old, new)
		})
	}
	return m, nil
}

// renumberer is an identity allocator that may change a label set's
// number after the node's lease was lost (identity.Allocator).
type renumberer interface {
	OnRenumber(f func(ls labels.Labels, old, new identity.NumericIdentity))
	WithCluster(ls labels.Labels) (labels.Labels, error)
}

// Renumber moves the endpoints of label set ls (with the cluster label)
// from identity old to new, in the datapath and in their records, and
// returns how many moved: the allocator gave ls another number after the
// node's lease was lost, old being another label set's now. Until
// 2026-12-06 the endpoints kept old, which every node resolved to that
// other label set, until they changed (TestRenumberMovesTheLabelSetsEndpoints).
// A failed datapath update is logged; the endpoint keeps the new number
// (the old one is not its label set's any more).
func (m *Manager) Renumber(ctx context.Context, ls labels.Labels, old, new identity.NumericIdentity) int {
	r, ok := m.ids.(renumberer)
	if !ok {
		return 0
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, ep := range m.endpoints {
		if ep.Identity != old {
			continue
		}
		if w, err := r.WithCluster(ep.Labels); err != nil || w.String() != ls.String() {
			continue
		}
		ep.Identity = new
		n++
		if m.hooks != nil {
			hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.kvWait)
			if err := m.hooks.EndpointUp(hctx, *ep); err != nil {
				slog.Error("endpoint's datapath not moved to its renumbered identity", "endpoint", ep.ID, "old", uint32(old), "new", uint32(new), "err", err)
			}
			cancel()
		}
		if err := m.persist(ep); err != nil {
			slog.Warn("could not persist a renumbered endpoint", "endpoint", ep.ID, "err", err)
		}
		slog.Warn("endpoint moved to its label set's new identity", "endpoint", ep.ID, "old", uint32(old), "new", uint32(new))
	}
	return n
}

// allocate takes the identity of ls within the manager's kvstore bound. An
// allocation that ran out of that time (the etcd client waits while it
// reconnects) or that the kvstore refused as unreachable is ErrUnavailable,
// unless the caller itself gave up.
func (m *Manager) allocate(ctx context.Context, ls labels.Labels) (identity.Identity, error) {
	actx, cancel := context.WithTimeout(ctx, m.kvWait)
	defer cancel()
	ident, _, err := m.ids.Allocate(actx, ls)
	if err == nil || ctx.Err() != nil {
		return ident, err
	}
	if actx.Err() != nil || kvUnreachable(err) {
		return ident, fmt.Errorf("%w: identity for %s: the kvstore did not answer within %s (%v); try again later", ErrUnavailable, ls, m.kvWait, err)
	}
	return ident, err
}

// release drops this node's reference to the identity of ls, waiting for
// the kvstore at most the manager's bound, even after ctx ends (the
// manager's lock is held: an outage held it until the kvstore answered
// again, until 2026-12-03). A release that fails keeps the reference: the
// identity stays allocated, not taken from its other holders.
func (m *Manager) release(ctx context.Context, ls labels.Labels) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.kvWait)
	defer cancel()
	return m.ids.Release(rctx, ls)
}

// restore writes ep's datapath state again after a failed update (after,
// say what failed), as release does on a context that is not the
// caller's: its end may be what failed.
func (m *Manager) restore(ctx context.Context, ep Endpoint, after string) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.kvWait)
	defer cancel()
	err := m.hooks.EndpointUp(rctx, ep)
	if err != nil {
		slog.Error("endpoint's datapath not restored after "+after, "endpoint", ep.ID, "err", err)
	}
	return err
}

// kvUnreachable reports whether err says the kvstore could not be reached.
func kvUnreachable(err error) bool {
	switch status.Code(err) { // a gRPC status, wrapped or not
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, rpctypes.ErrNoLeader) ||
		errors.Is(err, rpctypes.ErrTimeout) || errors.Is(err, rpctypes.ErrTimeoutDueToConnectionLost) ||
		errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail)
}

// HostIfName is the node-side interface name of a container's interface:
// "fil" and 12 hex digits of a hash, within the kernel's 15 characters.
func HostIfName(containerID, ifName string) string {
	h := sha256.Sum256([]byte(containerID + "/" + ifName))
	return "fil" + hex.EncodeToString(h[:])[:12]
}

func (m *Manager) path(id uint16) string { return filepath.Join(m.dir, fmt.Sprintf("%d.json", id)) }

func (m *Manager) persist(ep *Endpoint) error {
	b, err := json.MarshalIndent(ep, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(m.path(ep.ID), b, 0o600); err != nil {
		return fmt.Errorf("persist endpoint %d: %w", ep.ID, err)
	}
	return nil
}

// freeID is the next free endpoint ID after the last one handed out,
// round all 65,535 (0 is none). Flows the agent records after the
// datapath reported them are named by endpoint ID: until 2026-12-06 the
// lowest free ID was taken, and a deleted pod's last flows could carry
// the name of the pod created next (TestEndpointIDsNotReusedAtOnce).
func (m *Manager) freeID() (uint16, error) {
	id := m.lastID
	for range math.MaxUint16 {
		if id++; id == 0 {
			id = 1
		}
		if _, used := m.endpoints[id]; !used {
			m.lastID = id
			return id, nil
		}
	}
	return 0, fmt.Errorf("%w: no free endpoint ID", ErrInvalid)
}

func (m *Manager) findLocked(containerID, ifName string) *Endpoint {
	for _, ep := range m.endpoints {
		if ep.ContainerID == containerID && ep.IfName == ifName {
			return ep
		}
	}
	return nil
}

// ownNetNS is the agent's network namespace, the node's.
const ownNetNS = "/proc/self/ns/net"

// Create makes a new endpoint. It either completes or leaves nothing behind:
// address, identity reference and devices are undone on any failure.
func (m *Manager) Create(ctx context.Context, r CreateRequest) (Endpoint, error) {
	fromAPIServer := false
	if m.podLabels != nil && r.Namespace != "" && r.PodName != "" {
		if pl, ok := m.podLabels(ctx, r.Namespace, r.PodName); ok {
			r.Labels, fromAPIServer = pl, true
		}
	}
	ls, err := r.validate(fromAPIServer)
	if err != nil {
		return Endpoint{}, err
	}
	if r.Network == "" {
		r.Network = DefaultNetwork
	}
	st, err := os.Stat(r.NetNS)
	if err != nil {
		return Endpoint{}, fmt.Errorf("%w: netns %q: %v", ErrInvalid, r.NetNS, err)
	}
	// The node's own namespace (the agent's) is no pod's: an endpoint
	// there put its routes (a default route among them) and its socket
	// load-balancing registration on the node until 2026-12-07.
	if own, err := os.Stat(ownNetNS); err == nil && os.SameFile(st, own) {
		return Endpoint{}, fmt.Errorf("%w: netns %q is the node's own network namespace", ErrInvalid, r.NetNS)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if old := m.findLocked(r.ContainerID, r.IfName); old != nil {
		return Endpoint{}, fmt.Errorf("%w: containerID %q interface %q is endpoint %d", ErrExists, r.ContainerID, r.IfName, old.ID)
	}
	id, err := m.freeID()
	if err != nil {
		return Endpoint{}, err
	}
	owner := r.ContainerID + "/" + r.IfName
	ip, err := m.pool.Allocate(owner)
	if err != nil {
		return Endpoint{}, err
	}
	// Released (held back) once the datapath or the ipcache may have
	// named it; before, given back at once (ipam.Pool.Unallocate).
	named := false
	undo := []func(){func() {
		if named {
			m.pool.Release(ip)
		} else {
			m.pool.Unallocate(ip)
		}
	}}
	fail := func(err error) (Endpoint, error) {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		return Endpoint{}, err
	}
	ident, err := m.allocate(ctx, ls)
	if errors.Is(err, ErrUnavailable) {
		return fail(err)
	}
	if err != nil {
		return fail(fmt.Errorf("identity for %s: %w", ls, err))
	}
	undo = append(undo, func() {
		if err := m.release(ctx, ls); err != nil {
			slog.Warn("could not release identity while undoing endpoint", "labels", ls.String(), "err", err)
		}
	})
	host := HostIfName(r.ContainerID, r.IfName)
	pr, err := m.plumber.Setup(ctx, PlumbRequest{
		ContainerID: r.ContainerID, IfName: r.IfName, NetNS: r.NetNS, HostIfName: host,
		IPv4: ip, Gateway: m.pool.Gateway(), MTU: m.mtu,
	})
	if err != nil {
		return fail(err)
	}
	undo = append(undo, func() { m.plumber.Teardown(host) })
	ep := &Endpoint{
		ID: id, ContainerID: r.ContainerID, IfName: r.IfName, NetNS: r.NetNS, Network: r.Network,
		Namespace: r.Namespace, PodName: r.PodName, Labels: ls, Identity: ident.ID,
		IPv4: ip, Gateway: m.pool.Gateway(), PrefixLen: 32, MAC: pr.MAC,
		HostIfName: host, HostIfIndex: pr.HostIfIndex, HostMAC: pr.HostMAC, MTU: m.mtu,
		State: StateReady, Created: time.Now().UTC().Truncate(time.Second),
	}
	if m.hooks != nil {
		named = true
		if err := m.hooks.EndpointUp(ctx, *ep); err != nil {
			m.hooks.EndpointDown(*ep) // what it wrote before failing
			return fail(fmt.Errorf("datapath for endpoint %d: %w", id, err))
		}
		undo = append(undo, func() { m.hooks.EndpointDown(*ep) })
	}
	if err := m.persist(ep); err != nil {
		return fail(err)
	}
	m.add(ep)
	slog.Info("endpoint created", "id", id, "container", r.ContainerID, "ip", ip, "identity", uint32(ident.ID), "labels", ls.String())
	return *ep, nil
}

// Delete removes endpoint id: devices, address, identity reference, record.
func (m *Manager) Delete(ctx context.Context, id uint16) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	ep, ok := m.endpoints[id]
	if !ok {
		return fmt.Errorf("%w: %d", ErrNotFound, id)
	}
	return m.deleteLocked(ctx, ep)
}

// DeleteByContainer removes the endpoint of a container's interface; a
// missing one is not an error (CNI DEL is idempotent). It reports whether
// something was deleted.
func (m *Manager) DeleteByContainer(ctx context.Context, containerID, ifName string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ep := m.findLocked(containerID, ifName)
	if ep == nil {
		return false, nil
	}
	return true, m.deleteLocked(ctx, ep)
}

func (m *Manager) deleteLocked(ctx context.Context, ep *Endpoint) error {
	if m.hooks != nil {
		// Its device down before its programs come off (a pod being
		// deleted; gone already, or busy, the teardown says).
		m.plumber.SetUp(ep.HostIfName, ep.IPv4, false)
		m.hooks.EndpointDown(*ep)
	}
	if err := m.plumber.Teardown(ep.HostIfName); err != nil {
		// The device stays, and so does the endpoint: enforced again and
		// up until the DEL is tried again, or held down if its datapath
		// cannot be set up (until 2026-12-07 left up without its
		// programs then, TestFailedDeleteLeavesNoDeviceUnenforced).
		if m.hooks != nil {
			if m.restore(ctx, *ep, "a failed delete") == nil {
				m.plumber.SetUp(ep.HostIfName, ep.IPv4, true)
			} else {
				ep.State = StateHeld
			}
		}
		return fmt.Errorf("endpoint %d: %w", ep.ID, err)
	}
	if err := os.Remove(m.path(ep.ID)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("endpoint %d: remove record: %w", ep.ID, err)
	}
	delete(m.endpoints, ep.ID)
	if m.byIP[ep.IPv4] == ep.ID {
		delete(m.byIP, ep.IPv4)
	}
	m.pool.Release(ep.IPv4)
	if err := m.release(ctx, ep.Labels); err != nil {
		slog.Warn("identity release failed; GC will collect it", "endpoint", ep.ID, "err", err)
	}
	slog.Info("endpoint deleted", "id", ep.ID, "container", ep.ContainerID, "ip", ep.IPv4)
	return nil
}

// Get returns endpoint id.
func (m *Manager) Get(id uint16) (Endpoint, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ep, ok := m.endpoints[id]
	if !ok {
		return Endpoint{}, fmt.Errorf("%w: %d", ErrNotFound, id)
	}
	return *ep, nil
}

// Lookup returns the endpoint of a container's interface.
func (m *Manager) Lookup(containerID, ifName string) (Endpoint, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ep := m.findLocked(containerID, ifName)
	if ep == nil {
		return Endpoint{}, fmt.Errorf("%w: containerID %q interface %q", ErrNotFound, containerID, ifName)
	}
	return *ep, nil
}

// add keeps ep; m.mu is held.
func (m *Manager) add(ep *Endpoint) {
	m.endpoints[ep.ID] = ep
	m.lastID = max(m.lastID, ep.ID)
	if ep.IPv4.IsValid() {
		m.byIP[ep.IPv4] = ep.ID
	}
}

// ByIP returns the ID of the endpoint with IPv4 address ip (asked for
// every L7 record and DNS answer: an index, not a scan).
func (m *Manager) ByIP(ip netip.Addr) (uint16, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	id, ok := m.byIP[ip]
	return id, ok
}

// List returns every endpoint by ID.
func (m *Manager) List() []Endpoint {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Endpoint, 0, len(m.endpoints))
	for _, ep := range m.endpoints {
		out = append(out, *ep)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Restore loads the endpoints of the state dir after a restart: their
// addresses are claimed again and their identities referenced again. Pods
// are not touched; an endpoint whose device has gone is kept as
// disconnected so that CNI DEL can still clean it up.
func (m *Manager) Restore(ctx context.Context) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	files, err := filepath.Glob(filepath.Join(m.dir, "*.json"))
	if err != nil {
		return 0, err
	}
	n := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return n, fmt.Errorf("restore %s: %w", f, err)
		}
		var ep Endpoint
		if err := json.Unmarshal(b, &ep); err != nil {
			slog.Error("skipping unreadable endpoint record", "file", f, "err", err)
			continue
		}
		if err := m.pool.Claim(ep.IPv4, ep.ContainerID+"/"+ep.IfName); err != nil {
			slog.Error("skipping endpoint whose address cannot be claimed", "file", f, "err", err)
			continue
		}
		before := ep
		// The claimed labels go before the identity is taken: it is the
		// kept labels' (until 2026-12-05 the forged set's number stayed,
		// the host's for a lone reserved:host).
		ep.Labels = dropClaimedLabels(ep)
		ident, _, err := m.ids.Allocate(ctx, ep.Labels)
		if err != nil {
			m.pool.Release(ep.IPv4)
			return n, fmt.Errorf("restore endpoint %d identity: %w", ep.ID, err)
		}
		if ident.ID != ep.Identity {
			slog.Warn("endpoint identity changed across restart", "endpoint", ep.ID, "old", uint32(ep.Identity), "new", uint32(ident.ID))
			ep.Identity = ident.ID
		}
		if ep.Network == "" { // a record from before endpoints knew their network
			ep.Network = DefaultNetwork
		}
		if ep.PodName != "" && !ipcache.ValidPodName(ep.PodName) {
			// A record from before pod names were checked (2026-12-04):
			// other nodes refuse an ipcache entry naming it, so the
			// endpoint goes on unnamed rather than unreachable.
			slog.Warn("endpoint's pod name is not a Kubernetes object name: dropped", "endpoint", ep.ID, "podName", ep.PodName)
			ep.PodName = ""
		}
		ep.State = StateReady
		if !m.plumber.Present(ep.HostIfName) {
			ep.State = StateDisconnected
		}
		if ep.State == StateReady && m.hooks != nil {
			if err := m.restoreDatapath(ctx, &ep); err != nil {
				return n, err
			}
		}
		if ep.Identity != before.Identity || ep.State != before.State || ep.Network != before.Network || ep.PodName != before.PodName || !ep.Labels.Equal(before.Labels) {
			if err := m.persist(&ep); err != nil {
				return n, err
			}
		}
		m.add(&ep)
		n++
	}
	// Leftover temp files from a crash mid-write carry nothing committed.
	tmps, _ := filepath.Glob(filepath.Join(m.dir, "*.json.tmp"))
	newer, _ := filepath.Glob(filepath.Join(m.dir, ".*.json.tmp*")) // atomicfile's
	for _, t := range append(tmps, newer...) {
		os.Remove(t)
	}
	return n, nil
}

// restoreDatapath sets a restored endpoint's datapath up and its device
// up (it may have been held down). One that cannot be set up is held:
// its device is set down before what the failed try wrote is taken back,
// so that its pod gets no packet through rather than through without its
// programs, and the restore goes on (until 2026-12-07 it ended there,
// and the agent's start with it: the node crash-looped,
// TestRestoreHoldsAFailedEndpointDown). Only a device that cannot be
// held down either ends the restore.
func (m *Manager) restoreDatapath(ctx context.Context, ep *Endpoint) error {
	err := m.hooks.EndpointUp(ctx, *ep)
	if err == nil {
		if err := m.plumber.SetUp(ep.HostIfName, ep.IPv4, true); err != nil {
			slog.Error("restored endpoint's device not set up", "endpoint", ep.ID, "device", ep.HostIfName, "err", err)
		}
		return nil
	}
	derr := m.plumber.SetUp(ep.HostIfName, ep.IPv4, false)
	if derr != nil && !errors.Is(derr, ErrNoDevice) {
		return fmt.Errorf("restore endpoint %d datapath: %w (and its device %s could not be held down: %v)", ep.ID, err, ep.HostIfName, derr)
	}
	m.hooks.EndpointDown(*ep) // (the device down, or gone)
	if derr != nil {
		ep.State = StateDisconnected // gone since it was looked up
		return nil
	}
	ep.State = StateHeld
	slog.Error("endpoint's datapath not restored: its device is held down until a restart sets it up or its DEL removes it",
		"endpoint", ep.ID, "container", ep.ContainerID, "device", ep.HostIfName, "err", err)
	return nil
}

// dropClaimedLabels returns the labels of a restored record without those
// its workload could claim before labels were checked (reserved:, cidr:,
// the namespace and cluster keys): only the namespace label of the
// endpoint's own namespace is the agent's, and it is added when the
// record lacks it (as a create adds it), so namespaced policies still
// select the endpoint.
func dropClaimedLabels(ep Endpoint) labels.Labels {
	out := make(labels.Labels, 0, len(ep.Labels)+1)
	for _, l := range ep.Labels {
		own := l.Source == labels.SourceK8s && l.Key == labels.KeyNamespace && l.Value == ep.Namespace
		if err := checkLabel(l, true); err != nil && !own {
			slog.Warn("restored endpoint loses a label its workload may not set", "endpoint", ep.ID, "err", err)
			continue
		}
		out = append(out, l)
	}
	if ep.Namespace != "" {
		if with, err := out.With(labels.Label{Source: labels.SourceK8s, Key: labels.KeyNamespace, Value: ep.Namespace}); err == nil {
			out = with
		}
	}
	return out
}

// LabelStrings are the endpoint's labels as strings (for display).
func (ep Endpoint) LabelStrings() []string { return ep.Labels.Strings() }

// SetPodLabels gives the endpoints of pod namespace/name a new label set
// (a label change in Kubernetes): a new identity is taken, the datapath
// and policy follow through the hooks, and the old identity is released.
// It returns the number of endpoints relabelled; an endpoint that fails
// keeps its labels and the others are still relabelled (the first error is
// returned). podLabels come from the Kubernetes API server (see
// CheckWorkloadLabel for what they may carry). The kvstore is waited for
// at most KVStoreTimeout per endpoint, as at a create: the manager's lock
// is held meanwhile.
func (m *Manager) SetPodLabels(ctx context.Context, namespace, pod string, podLabels []string) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	var first error
	for _, ep := range m.endpoints {
		if ep.Namespace != namespace || ep.PodName != pod {
			continue
		}
		changed, err := m.relabelLocked(ctx, ep, podLabels)
		if err != nil && first == nil {
			first = fmt.Errorf("endpoint %d: %w", ep.ID, err)
		}
		if changed {
			n++
		}
	}
	return n, first
}

// relabelLocked gives ep podLabels (m.mu held) and reports whether they
// changed its labels.
func (m *Manager) relabelLocked(ctx context.Context, ep *Endpoint, podLabels []string) (bool, error) {
	ls, err := CreateRequest{ContainerID: ep.ContainerID, IfName: ep.IfName, NetNS: ep.NetNS, Namespace: ep.Namespace, Labels: podLabels}.validate(true)
	if err != nil {
		return false, err
	}
	if ls.String() == ep.Labels.String() {
		return false, nil
	}
	ident, err := m.allocate(ctx, ls)
	if err != nil {
		return false, err
	}
	old := *ep
	ep.Labels, ep.Identity = ls, ident.ID
	if m.hooks != nil {
		hctx, cancel := context.WithTimeout(ctx, m.kvWait)
		err := m.hooks.EndpointUp(hctx, *ep)
		cancel()
		if err != nil {
			// The failed update may have written part of the new state
			// (or, failing late, taken the endpoint down): put the old one
			// back, so the datapath has what the manager keeps.
			*ep = old
			m.restore(ctx, old, "a failed relabel (until its next relabel to other labels, or the agent's restart)") // (logged)
			m.release(ctx, ls)
			return false, err
		}
	}
	if err := m.persist(ep); err != nil {
		slog.Warn("could not persist a relabelled endpoint", "endpoint", ep.ID, "err", err)
	}
	if err := m.release(ctx, old.Labels); err != nil {
		slog.Warn("could not release the old identity of a relabelled endpoint", "labels", old.Labels.String(), "err", err)
	}
	return true, nil
}
