package service

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"

	"github.com/filament-net/filament/agent/datapath"
	"github.com/filament-net/filament/agent/kvstore"
)

// Prefix of the services in the kvstore: <Prefix><cluster>/<namespace>/<name>.
const Prefix = kvstore.Prefix + "state/services/v1/"

// ErrNotFound: no such service.
var ErrNotFound = errors.New("service not found")

// ErrConflict: a frontend is already taken by another service.
var ErrConflict = errors.New("frontend already in use")

// ErrBusy: the cluster's services kept changing under a store.
var ErrBusy = errors.New("services busy")

// Datapath is what the manager writes frontends to.
type Datapath interface {
	UpsertService(fe datapath.Frontend, s datapath.LBService) error
	DeleteService(fe datapath.Frontend) error
	Frontends() []datapath.Frontend
	MaglevSize() uint32
}

// Config of a Manager.
type Config struct {
	Cluster string
	// NodeIPs are this node's addresses (NodePort frontends).
	NodeIPs []netip.Addr
	// Algorithm is the default backend selection: random or maglev.
	Algorithm string
	KV        *kvstore.Client
	Datapath  Datapath
	// Reserved says why an address may not be a service frontend ("" if
	// it may): the nodes' own addresses, the kvstore's, ... A service
	// there would take traffic meant for the control plane.
	Reserved func(netip.Addr) string
	// ControlPlane says why an address may not be a backend either (the
	// kvstore's, say); node addresses may be (host-network backends).
	ControlPlane func(netip.Addr) string
}

// FrontendStatus is one frontend with its backends.
type FrontendStatus struct {
	Frontend
	Backends []BackendView `json:"backends"`
	// Split: how a graded service (failover graded) divides new
	// connections between the clusters, as the datapath's table has it.
	Split *Split `json:"split,omitempty"`
}

// Status is one service as this node load-balances it.
type Status struct {
	Namespace       string           `json:"namespace"`
	Name            string           `json:"name"`
	Type            string           `json:"type"`
	Options         Options          `json:"options"`
	Algorithm       string           `json:"algorithm"`
	AffinityTimeout uint32           `json:"sessionAffinityTimeout,omitempty"`
	Clusters        []string         `json:"clusters"`
	Frontends       []FrontendStatus `json:"frontends"`
	Spec            *Service         `json:"service"`
}

// Manager keeps this node's services: the local cluster's (from the
// kvstore, written through Upsert and Delete) merged with remote clusters'
// global services, minus backends on dead nodes; it writes the result to
// the datapath on every change.
type Manager struct {
	cfg Config

	mu      sync.Mutex
	local   map[string]*Service
	nsUse   map[string]usage               // namespace -> what its local services hold of the LB maps (checkBudget)
	remote  map[string]map[string]*Service // key -> cluster -> service
	dead    map[string]bool                // cluster/node
	applied map[string][]datapath.Frontend
	// written: the sum of the entry written last to each frontend of the
	// datapath (write), not the entry: a Maglev table is 64 KiB. It lives
	// as long as the Manager, which is made with the datapath it writes:
	// an agent that loads the datapath (again) makes a new Manager, which
	// writes every entry once.
	written map[datapath.Frontend]lbSum
	byFE    map[datapath.Frontend]string // frontend -> key of the service applied there
	// holders: frontend -> the keys of the services whose applied
	// frontends include it (one, unless older agents stored two at once;
	// the datapath serves the one byFE names).
	holders map[datapath.Frontend]map[string]bool
	status  map[string]Status
	// owners: claim (frontend, node port) -> the keys of the services
	// holding it (one, unless older agents stored two at once).
	owners map[string]map[string]bool
	synced chan struct{}
	// watched is the kvstore revision the watch has applied.
	watched kvstore.Applied
	errors  int

	// owns says whether an address is a remote cluster's own (in one of
	// its nodes' pod CIDRs, or one of its nodes' addresses); nil: any.
	owns func(cluster string, ip netip.Addr) bool
	// leftOut: by service key, the remote backends (cluster/address) left
	// out as not their clusters' own at its last apply (logged once).
	leftOut map[string]map[string]bool
	// remoteKeys: by cluster, the keys of its services in remote.
	remoteKeys map[string]map[string]bool

	// remoteUses: what each frontend's datapath entry lists of remote
	// clusters' backends, remoteTotal their sum, at most maxRemoteBackends (MaxRemoteBackends
	// when 0); remoteLeft: those left out for it, remoteShort the services
	// leaving some out (applied again when remote backends go:
	// remoteFreed, refilling). remotebudget.go.
	remoteUses        map[datapath.Frontend]remoteUse
	remoteTotal       int
	remoteLeft        int
	remoteShort       map[string]bool
	maxRemoteBackends int
	remoteFreed       bool
	refilling         bool
	remoteFull        bool // logged once

	// sums: by service key, a hash of the value the view has and its
	// revision (put compares the revision, not the value, when the value
	// is the view's).
	sums map[string]storedSum

	// beforePut, when set (tests), runs between put's check and its
	// transaction.
	beforePut func()
}

// SetRemoteOwner makes owns decide which addresses a remote cluster's
// backends may have: a backend of another address is left out (call
// before remote services come).
func (m *Manager) SetRemoteOwner(owns func(cluster string, ip netip.Addr) bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.owns = owns
}

// NodesChanged applies again the services with backends of the given
// remote clusters: what those clusters own changed (their nodes came,
// changed or went, or gave way to this cluster's), so a backend left out
// may be theirs now, and one taken may no longer be.
func (m *Manager) NodesChanged(clusters []string) {
	if len(clusters) == 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	keys := map[string]bool{}
	for _, c := range clusters {
		for key := range m.remoteKeys[c] {
			if m.local[key] != nil {
				keys[key] = true
			}
		}
	}
	for _, key := range slices.Sorted(maps.Keys(keys)) {
		m.apply(key)
	}
}

// ownedRemotes is the remote services of key with only the backends
// their clusters own (a service is copied only when it loses some); a
// backend newly left out is logged; m.mu held.
func (m *Manager) ownedRemotes(key string) map[string]*Service {
	remotes := m.remote[key]
	was := m.leftOut[key]
	delete(m.leftOut, key)
	if m.owns == nil && m.cfg.ControlPlane == nil || len(remotes) == 0 {
		return remotes
	}
	// A backend on a control-plane address (the kvstore's) is left out
	// whoever claims it, as a local service's is refused (until
	// 2026-12-05 remote backends were not checked,
	// TestManagerRemoteBackendOnControlPlaneLeftOut).
	ours := func(c string, ip netip.Addr) bool {
		if m.cfg.ControlPlane != nil && m.cfg.ControlPlane(ip) != "" {
			return false
		}
		return m.owns == nil || m.owns(c, ip)
	}
	var out map[string]*Service
	now := map[string]bool{}
	for c, r := range remotes {
		keep := r.Backends
		for i, b := range r.Backends {
			ip, err := netip.ParseAddr(b.IP)
			if err == nil && ours(c, ip) {
				if len(keep) < len(r.Backends) {
					keep = append(keep, b)
				}
				continue
			}
			if len(keep) == len(r.Backends) {
				keep = slices.Clone(r.Backends[:i])
			}
			if !was[c+"/"+b.IP] {
				slog.Warn("left out a remote cluster's backend that is not its own", "service", key, "cluster", c, "backend", b.IP)
			}
			now[c+"/"+b.IP] = true
		}
		if len(keep) == len(r.Backends) {
			continue
		}
		if out == nil {
			out = maps.Clone(remotes)
		}
		cp := *r
		cp.Backends = keep
		out[c] = &cp
	}
	if len(now) > 0 {
		if m.leftOut == nil {
			m.leftOut = map[string]map[string]bool{}
		}
		m.leftOut[key] = now
	}
	if out == nil {
		return remotes
	}
	return out
}

// New starts following the cluster's services; it returns once the
// initial list is applied.
func New(ctx context.Context, cfg Config) (*Manager, error) {
	if cfg.Algorithm == "" {
		cfg.Algorithm = "random"
	}
	if err := ValidAlgorithm(cfg.Algorithm); err != nil {
		return nil, err
	}
	m := &Manager{cfg: cfg, local: map[string]*Service{}, nsUse: map[string]usage{}, sums: map[string]storedSum{}, written: map[datapath.Frontend]lbSum{}, remote: map[string]map[string]*Service{},
		dead: map[string]bool{}, applied: map[string][]datapath.Frontend{}, byFE: map[datapath.Frontend]string{}, holders: map[datapath.Frontend]map[string]bool{}, status: map[string]Status{}, owners: map[string]map[string]bool{}, synced: make(chan struct{})}
	if cfg.KV != nil {
		go m.watch(ctx)
		select {
		case <-m.synced:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return m, nil
}

func (m *Manager) key(s *Service) string {
	return Prefix + m.cfg.Cluster + "/" + s.Metadata.Namespace + "/" + s.Metadata.Name
}

func (m *Manager) watch(ctx context.Context) {
	prefix := Prefix + m.cfg.Cluster + "/"
	var once sync.Once
	for ev := range m.cfg.KV.Watch(ctx, prefix, kvstore.WatchOptions{}) {
		m.apply1(ev, prefix, &once)
		// A list's entries come in key order, each with its own
		// revision: the view reflects the list's revision only once the
		// list is done (its deletions and EventSynced carry it).
		if !ev.FromList {
			m.watched.Advance(ev.Revision)
		}
	}
}

// apply1 applies one event of the watch.
func (m *Manager) apply1(ev kvstore.Event, prefix string, once *sync.Once) {
	if ev.Type == kvstore.EventSynced {
		once.Do(func() {
			m.reconcile()
			close(m.synced)
		})
		return
	}
	key := strings.TrimPrefix(ev.Key, prefix)
	m.noteSum(key, ev)
	if ev.Type == kvstore.EventDelete {
		m.setLocal(key, nil)
		return
	}
	s, err := Parse(ev.Value)
	if err == nil {
		err = m.checkReserved(s)
	}
	if err == nil {
		m.noteFolded(key, ev, s)
	}
	if err != nil {
		slog.Warn("ignoring an invalid service in the kvstore", "key", ev.Key, "err", err)
		m.setLocal(key, nil)
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.budgetLocked(key, s); err != nil {
		// Written past Upsert's check (by a holder of the kvstore's
		// credentials): the namespace's services read before it keep
		// their slots.
		slog.Warn("ignoring a service in the kvstore past its namespace's budget", "key", ev.Key, "err", err)
		m.setLocalLocked(key, nil)
		return
	}
	m.setLocalLocked(key, s)
}

// storedSum is a stored value's hash and the revision that wrote it, and
// (folded) the hash of the value it means in the form agents of this
// version store a Kubernetes Service (Service.KubernetesForm), when that
// differs.
type storedSum struct {
	rev    int64
	sum    [sha256.Size]byte
	folded [sha256.Size]byte
}

// noteSum keeps what the view has under key after ev (put's check).
func (m *Manager) noteSum(key string, ev kvstore.Event) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if ev.Type == kvstore.EventDelete {
		delete(m.sums, key)
		return
	}
	m.sums[key] = storedSum{rev: ev.Revision, sum: sha256.Sum256(ev.Value)}
}

// noteFolded keeps the hash of the value the view has under key (ev's) in
// the form this version stores a Kubernetes Service, when an agent of an
// earlier version stored it otherwise (every backend naming every port,
// every annotation): so an agent storing the same service finds it stored
// (put), and agents of two versions do not write one Service's every
// change in turn during an upgrade (found by the review of the folded
// ports, TestManagerOlderShapeStoredNotRewritten). s is the value parsed,
// which stays as it is: a copy is changed, and only when it differs.
func (m *Manager) noteFolded(key string, ev kvstore.Event, s *Service) {
	if s.Metadata.Annotations[SourceAnnotation] != SourceKubernetes {
		return
	}
	unread := false
	for k := range s.Metadata.Annotations {
		if k != SourceAnnotation && k != UIDAnnotation && !slices.Contains(Honoured, k) {
			unread = true
			break
		}
	}
	if !unread && !slices.ContainsFunc(s.Backends, func(b Backend) bool { return b.Ports != nil }) {
		return
	}
	s, err := Parse(ev.Value)
	if err != nil || !s.KubernetesForm() {
		return
	}
	data, err := json.Marshal(s)
	if err != nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if v, ok := m.sums[key]; ok && v.rev == ev.Revision {
		v.folded = sha256.Sum256(data)
		m.sums[key] = v
	}
}

// appliedWait bounds how long a write waits for the watch to apply it.
const appliedWait = 5 * time.Second

// waitApplied returns once the watch has applied revision rev (a write of
// this manager's under its prefix: only those make events), or after
// appliedWait or ctx's end: the write is done either way. So the writer's
// next step sees its own write: a frontend just freed by a delete is free
// for the next Upsert (before, it was refused as a conflict until the
// watch caught up), one just taken is taken.
func (m *Manager) waitApplied(ctx context.Context, rev int64) error {
	wctx, cancel := context.WithTimeout(ctx, appliedWait)
	defer cancel()
	err := m.watched.Wait(wctx, rev)
	if err != nil && ctx.Err() == nil {
		slog.Warn("service write not yet seen by this agent's watch", "revision", rev, "waited", appliedWait)
	}
	return err
}

func (m *Manager) setLocal(key string, s *Service) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.setLocalLocked(key, s)
}

// setLocalLocked is setLocal with m.mu held.
func (m *Manager) setLocalLocked(key string, s *Service) {
	if old, ok := m.local[key]; ok {
		ns := old.Metadata.Namespace
		if m.nsUse[ns] = m.nsUse[ns].add(m.use(old), -1); m.nsUse[ns] == (usage{}) {
			delete(m.nsUse, ns)
		}
		for _, c := range claims(old) {
			delete(m.owners[c], key)
			if len(m.owners[c]) == 0 {
				delete(m.owners, c)
			}
		}
	}
	if s == nil {
		delete(m.local, key)
	} else {
		for _, c := range claims(s) {
			if m.owners[c] == nil {
				m.owners[c] = map[string]bool{}
			}
			m.owners[c][key] = true
		}
		for i := range s.Backends {
			s.Backends[i].Cluster = m.cfg.Cluster
		}
		m.local[key] = s
		m.nsUse[s.Metadata.Namespace] = m.nsUse[s.Metadata.Namespace].add(m.use(s), 1)
	}
	m.apply(key)
}

// RemoteChanged takes a remote cluster's service (from the cluster mesh).
func (m *Manager) RemoteChanged(cluster string, s *Service, deleted bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	key := s.Key()
	if deleted {
		delete(m.remote[key], cluster)
		if len(m.remote[key]) == 0 {
			delete(m.remote, key)
		}
		delete(m.remoteKeys[cluster], key)
		if len(m.remoteKeys[cluster]) == 0 {
			delete(m.remoteKeys, cluster)
		}
	} else {
		if m.remote[key] == nil {
			m.remote[key] = map[string]*Service{}
		}
		if m.remoteKeys == nil {
			m.remoteKeys = map[string]map[string]bool{}
		}
		if m.remoteKeys[cluster] == nil {
			m.remoteKeys[cluster] = map[string]bool{}
		}
		m.remoteKeys[cluster][key] = true
		for i := range s.Backends {
			s.Backends[i].Cluster = cluster
		}
		m.remote[key][cluster] = s
	}
	m.apply(key)
}

// NodeAlive marks a node of a cluster up or down (failure detection);
// backends on a dead node leave every service at once.
func (m *Manager) NodeAlive(cluster, node string, alive bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := cluster + "/" + node
	if m.dead[k] == !alive {
		return
	}
	if alive {
		delete(m.dead, k)
	} else {
		m.dead[k] = true
	}
	for key := range m.local {
		m.apply(key)
	}
}

func proto(p string) uint8 {
	if p == "UDP" {
		return unix.IPPROTO_UDP
	}
	return unix.IPPROTO_TCP
}

// lbEntry is one frontend's datapath entry of a service.
type lbEntry struct {
	fe     datapath.Frontend
	lbs    datapath.LBService
	ok     bool      // false: its table could not be made (counted and logged)
	remote remoteUse // what it lists of remote backends (recorded once written)
}

// entries computes the status and the datapath entries of the local
// service key (ok false if there is none); m.mu held.
func (m *Manager) entries(key string) (st Status, ents []lbEntry, ok bool) {
	s := m.local[key]
	if s == nil {
		delete(m.leftOut, key)
		return Status{}, nil, false
	}
	st = Status{Namespace: s.Metadata.Namespace, Name: s.Metadata.Name, Type: s.Spec.Type, Options: s.Options(),
		Algorithm: s.Algorithm(m.cfg.Algorithm), AffinityTimeout: s.AffinityTimeout(), Clusters: []string{m.cfg.Cluster}, Spec: s}
	remotes := m.ownedRemotes(key)
	if st.Options.Global {
		for c, r := range remotes {
			if o := r.Options(); o.Global && o.Shared && c != m.cfg.Cluster {
				st.Clusters = append(st.Clusters, c)
			}
		}
		slices.Sort(st.Clusters[1:])
	}
	alive := func(cluster, node string) bool { return !m.dead[cluster+"/"+node] }
	fes := s.Frontends(m.cfg.NodeIPs)
	room := m.remoteRoom(key, fes)
	for _, fe := range fes {
		dfe := fe.entryKey()
		had := m.remoteUses[dfe].listed // this entry replaces it
		views, leftOut, published := selectBounded(s, remotes, m.cfg.Cluster, fe, alive, room+had)
		listed := 0
		for _, v := range views {
			if v.Cluster != m.cfg.Cluster {
				listed++
			}
		}
		room -= listed - had
		fst := FrontendStatus{Frontend: fe, Backends: views}
		e := lbEntry{fe: dfe, remote: remoteUse{key, listed, leftOut},
			lbs: datapath.LBService{NodePort: fe.Type == "NodePort", AffinityTimeout: st.AffinityTimeout}}
		pref, table, err := m.table(st, views, published, &fst)
		st.Frontends = append(st.Frontends, fst)
		if err != nil {
			m.errors++
			slog.Error("maglev table", "service", key, "err", err)
			ents = append(ents, e)
			continue
		}
		for _, b := range pref {
			e.lbs.Backends = append(e.lbs.Backends, datapath.LBBackend{IP: b.Addr(), Port: b.Port()})
		}
		// Every backend listed, in any state, keeps its NodePort flows;
		// the datapath forgets the flows of the others.
		inPref := make(map[netip.AddrPort]bool, len(pref))
		for _, b := range pref {
			inPref[b] = true
		}
		// The status marks preferred the backends new connections can
		// reach: those holding a slot, or a Maglev entry. Until a review
		// found it a graded frontend's every usable backend of a level
		// with load was marked, those past a capped table or a Maglev
		// table's entries too (TestManagerGradedPreferredHoldSlots).
		holds := inPref
		if table != nil {
			holds = make(map[netip.AddrPort]bool, len(pref))
			for _, x := range table {
				holds[pref[x]] = true
			}
		}
		for i := range views {
			views[i].Preferred = holds[views[i].Addr]
		}
		for _, v := range views {
			if !inPref[v.Addr] {
				e.lbs.Keep = append(e.lbs.Keep, datapath.LBBackend{IP: v.Addr.Addr(), Port: v.Addr.Port()})
			}
		}
		if table != nil {
			e.lbs.Algorithm, e.lbs.Maglev = datapath.AlgMaglev, table
		}
		e.ok = true
		ents = append(ents, e)
	}
	return st, ents, true
}

// apply computes the frontends of one service and writes them; m.mu held.
// A frontend another service holds too (older agents stored two at once)
// stays in the datapath when this one lets it go, serving that one.
func (m *Manager) apply(key string) {
	var want []datapath.Frontend
	short := false // it leaves remote backends out (applied again when room frees)
	if st, ents, ok := m.entries(key); ok {
		for _, e := range ents {
			want = append(want, e.fe)
			short = short || e.remote.leftOut > 0
			if !e.ok {
				continue
			}
			if err := m.write(e.fe, e.lbs); err != nil {
				m.errors++
				slog.Error("writing a service frontend to the datapath", "service", key, "frontend", e.fe, "err", err)
			} else {
				m.setRemoteUse(e.fe, e.remote)
			}
		}
		m.status[key] = st
	} else {
		delete(m.status, key)
	}
	if short {
		if m.remoteShort == nil {
			m.remoteShort = map[string]bool{}
		}
		m.remoteShort[key] = true
	} else {
		delete(m.remoteShort, key)
	}
	wanted := make(map[datapath.Frontend]bool, len(want)) // a set: a service may have 16,000 frontends
	for _, fe := range want {
		wanted[fe] = true
	}
	for _, old := range m.applied[key] {
		if wanted[old] {
			continue
		}
		delete(m.holders[old], key)
		if len(m.holders[old]) > 0 {
			if m.byFE[old] == key {
				other := slices.Sorted(maps.Keys(m.holders[old]))[0]
				m.byFE[old] = other
				m.handOver(other, old)
			}
			continue
		}
		delete(m.holders, old)
		delete(m.byFE, old)
		m.unload(old)
	}
	for _, fe := range want {
		m.byFE[fe] = key
		if m.holders[fe] == nil {
			m.holders[fe] = map[string]bool{}
		}
		m.holders[fe][key] = true
	}
	if len(want) == 0 {
		delete(m.applied, key)
	} else {
		m.applied[key] = want
	}
	m.refillRemote()
}

// handOver writes the entry of service key for frontend fe, which the
// service served there until now let go; only that frontend (key's others
// stay as they are). If key's entry cannot be written, the frontend is
// removed rather than left serving the backends of the service that let
// it go. m.mu held.
func (m *Manager) handOver(key string, fe datapath.Frontend) {
	_, ents, _ := m.entries(key)
	for _, e := range ents {
		if e.fe != fe || !e.ok {
			continue
		}
		err := m.write(fe, e.lbs)
		if err == nil {
			m.setRemoteUse(fe, e.remote)
			return
		}
		m.errors++
		slog.Error("writing a service frontend to the datapath", "service", key, "frontend", fe, "err", err)
	}
	m.unload(fe)
}

// write writes frontend fe's entry lbs to the datapath unless the entry
// written last there is the same (m.written); m.mu held. Until 2026-12-07
// every change of a service wrote all its frontends, every slot and
// member of each, with m.mu held: a Service of 16,000 ports whose
// annotation was flipped in a loop burnt a core of every node and
// delayed NodeAlive's failover (TestManagerUnchangedFrontendsNotRewritten).
// A failed write forgets the entry, so the next one writes it whole.
func (m *Manager) write(fe datapath.Frontend, lbs datapath.LBService) error {
	sum := sumLB(lbs)
	if last, ok := m.written[fe]; ok && last == sum {
		return nil
	}
	if err := m.cfg.Datapath.UpsertService(fe, lbs); err != nil {
		delete(m.written, fe)
		return err
	}
	m.written[fe] = sum
	return nil
}

// lbSum is the SHA-256 of a datapath entry's canonical encoding (sumLB).
// The review of dc07e0d found that the manager kept a copy of each entry
// written, so of each Maglev table (16,381 int32s, 64 KiB): with the
// 1,024 tables of lb_maglev in use, 64 MiB more in every agent;
// a sum is 32 bytes (TestManagerWrittenMemoryBounded). Entries that
// differ have different encodings, so a changed entry is skipped only
// for a SHA-256 collision.
type lbSum [sha256.Size]byte

// sumLB sums every field of lbs, each list after its length, each address
// in its binary form after its length (an IPv4 address and its IPv6 form
// differ, as do zones).
func sumLB(lbs datapath.LBService) lbSum {
	h := sha256.New()
	buf := make([]byte, 0, 4096)
	var nodePort byte
	if lbs.NodePort {
		nodePort = 1
	}
	buf = append(buf, nodePort, byte(lbs.Algorithm))
	buf = binary.LittleEndian.AppendUint32(buf, lbs.AffinityTimeout)
	backends := func(bs []datapath.LBBackend) {
		buf = binary.LittleEndian.AppendUint64(buf, uint64(len(bs)))
		for _, b := range bs {
			a, _ := b.IP.MarshalBinary() // never fails; 4 or 16 bytes and a zone
			buf = binary.LittleEndian.AppendUint32(buf, uint32(len(a)))
			buf = append(buf, a...)
			buf = binary.LittleEndian.AppendUint16(buf, b.Port)
			if len(buf) >= 4096-64 {
				h.Write(buf)
				buf = buf[:0]
			}
		}
	}
	backends(lbs.Backends)
	buf = binary.LittleEndian.AppendUint64(buf, uint64(len(lbs.Maglev)))
	for _, i := range lbs.Maglev {
		buf = binary.LittleEndian.AppendUint32(buf, uint32(i))
		if len(buf) >= 4096-64 {
			h.Write(buf)
			buf = buf[:0]
		}
	}
	backends(lbs.Keep)
	h.Write(buf)
	var sum lbSum
	h.Sum(sum[:0])
	return sum
}

// unload removes frontend fe from the datapath; m.mu held.
func (m *Manager) unload(fe datapath.Frontend) {
	delete(m.written, fe) // also when the delete fails: the entry is unknown
	if err := m.cfg.Datapath.DeleteService(fe); err == nil {
		m.setRemoteUse(fe, remoteUse{})
	} else {
		m.errors++
		slog.Error("removing a service frontend from the datapath", "frontend", fe, "err", err)
	}
}

// table returns what a frontend's datapath entry holds: its slots (the
// backends new connections use; a graded frontend's may repeat one) and,
// for Maglev, the table over them. A graded frontend's split goes in fst,
// its remote clusters' healths from what they publish (published).
func (m *Manager) table(st Status, views []BackendView, published map[string]Level, fst *FrontendStatus) ([]netip.AddrPort, []int32, error) {
	maglev := st.Algorithm == "maglev"
	if st.Options.Failover == FailoverGraded {
		sp := gradedSplit(views, m.cfg.Cluster, published)
		fst.Split = &sp
		if maglev {
			return ComposeMaglev(views, m.cfg.Cluster, &sp, m.cfg.Datapath.MaglevSize())
		}
		return ComposeSlots(views, m.cfg.Cluster, &sp), nil, nil
	}
	pref := Preferred(views)
	if !maglev || len(pref) == 0 {
		return pref, nil, nil
	}
	table, err := MaglevTable(pref, m.cfg.Datapath.MaglevSize())
	return pref, table, err
}

// At names the service whose frontend (a ClusterIP or NodePort address
// and port, protocol "TCP" or "UDP") this node load-balances; ok is false
// when none is there (gone since, say).
func (m *Manager) At(fe netip.AddrPort, protocol string) (namespace, name string, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	key, found := m.byFE[datapath.Frontend{IP: fe.Addr(), Port: fe.Port(), Proto: proto(strings.ToUpper(protocol))}]
	if !found {
		return "", "", false
	}
	st, found := m.status[key]
	if !found {
		return "", "", false
	}
	return st.Namespace, st.Name, true
}

// reconcile removes datapath frontends no service has (left by an earlier
// agent); it runs once the initial list is applied.
func (m *Manager) reconcile() {
	m.mu.Lock()
	defer m.mu.Unlock()
	want := map[datapath.Frontend]bool{}
	for _, fes := range m.applied {
		for _, fe := range fes {
			want[fe] = true
		}
	}
	for _, fe := range m.cfg.Datapath.Frontends() {
		if !want[fe] {
			delete(m.written, fe)
			m.cfg.Datapath.DeleteService(fe)
		}
	}
}

// conflictLocked finds another local service holding one of s's
// frontends. The caller holds m.mu.
func (m *Manager) conflictLocked(s *Service) error {
	me := s.Metadata.Namespace + "/" + s.Metadata.Name
	for _, c := range claims(s) {
		// One already holding it keeps it (beside another that older
		// agents stored at once, whichever the datapath serves).
		if holders := m.owners[c]; len(holders) > 0 && !holders[me] {
			return fmt.Errorf("%w: %s belongs to service %s", ErrConflict, c, slices.Sorted(maps.Keys(holders))[0])
		}
	}
	return nil
}

// claims are the addresses a service holds exclusively: its ClusterIP
// frontends and its node ports (on every node).
func claims(s *Service) []string {
	var out []string
	for _, fe := range s.Frontends(nil) {
		out = append(out, fe.String())
	}
	for _, p := range s.Spec.Ports {
		if p.NodePort != 0 {
			out = append(out, fmt.Sprintf("nodePort %d/%s", p.NodePort, p.Proto()))
		}
	}
	return out
}

// Upsert validates s and stores it for the whole cluster; every agent
// applies it from the kvstore. A rejected service changes nothing.
func (m *Manager) Upsert(ctx context.Context, s *Service) error {
	if err := s.Validate(); err != nil {
		return err
	}
	if err := m.checkReserved(s); err != nil {
		return err
	}
	if err := m.checkBudget(s); err != nil {
		return err
	}
	for i := range s.Backends {
		s.Backends[i].Cluster = ""
	}
	data, err := json.Marshal(s)
	if err != nil {
		return err
	}
	if err := checkSize(s, data); err != nil {
		return err
	}
	if m.cfg.KV == nil {
		// Keep a copy, as the kvstore would: the caller's s stays the
		// caller's, so changing it later (or a rejected Upsert of it)
		// does not change the manager's service behind its back.
		var c Service
		if err := json.Unmarshal(data, &c); err != nil {
			return err
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		// Check again under the same lock as the store: two concurrent
		// Upserts must not both take a frontend.
		if err := m.conflictLocked(&c); err != nil {
			return err
		}
		m.setLocalLocked(c.Metadata.Namespace+"/"+c.Metadata.Name, &c)
		return nil
	}
	return m.put(ctx, s, string(data))
}

// put stores s (data) in the kvstore once no other service holds one of
// its frontends, by a transaction that does nothing if what the agent's
// check saw (its view, at least at revision seen) changed meanwhile:
//   - a service taking a frontend its view does not give it yet: no
//     service of the cluster changed after seen;
//   - one keeping the frontends it holds (its backends changed, mostly):
//     it is stored and unchanged since seen (so it still holds them);
//   - one without frontends or node ports: no guard.
//
// Then the agent catches up and checks again (at most putAttempts times;
// ErrBusy). A value already stored as it is is not written again (every
// agent stores a Kubernetes Service's every change: one write, not one per
// agent, and fewer changes for a guard to lose to). So two agents (or two
// requests on one) storing services on one frontend at once store one of
// them: before 2026-12-04 each checked its own view and all were stored.
//
// Whether the value is stored already is told by the view: the
// transaction holds only while the key is at the revision the view has
// (absent: 0), and the view's value is compared by its hash; a view
// behind on the key catches up and the store is tried again. So the value
// goes to the kvstore once, in the put: until 2026-12-07 it was also
// compared, and sent twice (TestManagerStoreOfSameValueWritesNothing,
// TestManagerStoreOfSameValueFromABehindView).
func (m *Manager) put(ctx context.Context, s *Service, data string) error {
	prefix, key := Prefix+m.cfg.Cluster+"/", m.key(s)
	sk := s.Metadata.Namespace + "/" + s.Metadata.Name
	sum := sha256.Sum256([]byte(data))
	latest := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithKeysOnly(),
		clientv3.WithSort(clientv3.SortByModRevision, clientv3.SortDescend), clientv3.WithLimit(1)}
	for attempt := 1; ; attempt++ {
		seen := m.watched.Rev() // the view checked next reflects at least this
		m.mu.Lock()
		err, taking := m.conflictLocked(s), m.takingLocked(s)
		view := m.sums[sk]
		m.mu.Unlock()
		if err != nil {
			return err
		}
		var guard []clientv3.Cmp
		switch {
		case taking:
			guard = []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(prefix), "<", seen+1).WithPrefix()}
		case len(claims(s)) > 0:
			guard = []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), ">", 0), clientv3.Compare(clientv3.ModRevision(key), "<", seen+1)}
		}
		if m.beforePut != nil {
			m.beforePut()
		}
		own := clientv3.OpGet(key, clientv3.WithKeysOnly())
		stored := view.rev != 0 && (view.sum == sum || view.folded == sum)
		write := clientv3.OpTxn(guard, []clientv3.Op{clientv3.OpPut(key, data)}, []clientv3.Op{clientv3.OpGet(prefix, latest...), own})
		if stored {
			write = own
		}
		r, err := m.cfg.KV.Raw().Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", view.rev)).Then(write).Else(own).Commit()
		if err != nil {
			return fmt.Errorf("kvstore: put %s: %w", key, err)
		}
		switch {
		case !r.Succeeded: // the view is behind on the key: catch up
			err = m.catchUp(ctx, sk, r.Responses[0].GetResponseRange().Kvs)
		case stored: // stored already, as it is
			return nil
		case r.Responses[0].GetResponseTxn().Succeeded:
			m.waitApplied(ctx, r.Header.Revision)
			return nil
		default:
			// Catch up with what failed the guard: the newest service's
			// write, and the service's own delete (a keys-only read does
			// not show deletes: wait until the view has dropped it).
			inner := r.Responses[0].GetResponseTxn()
			if kvs := inner.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
				err = m.waitApplied(ctx, kvs[0].ModRevision)
			}
			if err == nil && len(inner.Responses[1].GetResponseRange().Kvs) == 0 {
				err = m.waitGone(ctx, sk)
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			return fmt.Errorf("%w: this agent's view of the services is behind: %v; try again", ErrBusy, err)
		}
		if attempt == putAttempts {
			return fmt.Errorf("%w: the cluster's services changed under this store %d times in a row; try again", ErrBusy, putAttempts)
		}
	}
}

// catchUp waits until the view has the service key sk as the kvstore
// has it (kvs: a keys-only read of it): at its revision, or gone.
func (m *Manager) catchUp(ctx context.Context, sk string, kvs []*mvccpb.KeyValue) error {
	if len(kvs) > 0 {
		return m.waitApplied(ctx, kvs[0].ModRevision)
	}
	return m.waitGone(ctx, sk)
}

// waitGone returns once the view no longer has the service key (at most
// appliedWait).
func (m *Manager) waitGone(ctx context.Context, key string) error {
	wctx, cancel := context.WithTimeout(ctx, appliedWait)
	defer cancel()
	for {
		rev := m.watched.Rev()
		m.mu.Lock()
		_, held := m.local[key]
		_, kept := m.sums[key] // an invalid value too
		m.mu.Unlock()
		held = held || kept
		if !held {
			return nil
		}
		if err := m.watched.Wait(wctx, rev+1); err != nil {
			return err
		}
	}
}

// putAttempts bounds how often put checks again after another write.
const putAttempts = 10

// takingLocked reports whether s claims a frontend this agent's view does
// not give it already. The caller holds m.mu.
func (m *Manager) takingLocked(s *Service) bool {
	me := s.Metadata.Namespace + "/" + s.Metadata.Name
	for _, c := range claims(s) {
		if !m.owners[c][me] {
			return true
		}
	}
	return false
}

// checkReserved refuses a service whose frontend is a reserved address or
// whose backend is a control-plane address, naming the field.
func (m *Manager) checkReserved(s *Service) error {
	if m.cfg.Reserved != nil && s.Spec.ClusterIP != "" {
		ip, _ := netip.ParseAddr(s.Spec.ClusterIP)
		if why := m.cfg.Reserved(ip); why != "" {
			return invalid("spec.clusterIP %s: %s", ip, why)
		}
	}
	if m.cfg.ControlPlane != nil {
		for i, b := range s.Backends {
			ip, _ := netip.ParseAddr(b.IP)
			if why := m.cfg.ControlPlane(ip); why != "" {
				return invalid("backends[%d].ip %s: %s", i, ip, why)
			}
		}
	}
	return nil
}

// Delete removes a service from the cluster.
func (m *Manager) Delete(ctx context.Context, namespace, name string) error {
	m.mu.Lock()
	_, ok := m.local[namespace+"/"+name]
	m.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %s/%s", ErrNotFound, namespace, name)
	}
	if m.cfg.KV == nil {
		m.setLocal(namespace+"/"+name, nil)
		return nil
	}
	key := Prefix + m.cfg.Cluster + "/" + namespace + "/" + name
	r, err := m.cfg.KV.Raw().Delete(ctx, key)
	if err != nil {
		return fmt.Errorf("kvstore: delete %s: %w", key, err)
	}
	if r.Deleted > 0 {
		// (A delete of nothing makes no event to wait for.)
		m.waitApplied(ctx, r.Header.Revision)
	}
	return nil
}

// Stored is one of this cluster's services as the kvstore holds it.
type Stored struct {
	Namespace, Name string
	// Source is the service's SourceAnnotation ("" when it has none).
	Source string
	// Revision is the kvstore's revision of the service (0 without a
	// kvstore).
	Revision int64
}

// Stored lists this cluster's services as the kvstore holds them now; a
// stored value that does not parse is left out.
func (m *Manager) Stored(ctx context.Context) ([]Stored, error) {
	if m.cfg.KV == nil {
		m.mu.Lock()
		defer m.mu.Unlock()
		out := make([]Stored, 0, len(m.local))
		for _, s := range m.local {
			out = append(out, Stored{Namespace: s.Metadata.Namespace, Name: s.Metadata.Name, Source: s.Metadata.Annotations[SourceAnnotation]})
		}
		return out, nil
	}
	kvs, _, err := m.cfg.KV.List(ctx, Prefix+m.cfg.Cluster+"/")
	if err != nil {
		return nil, err
	}
	out := make([]Stored, 0, len(kvs))
	for _, kv := range kvs {
		s, err := Parse(kv.Value)
		if err != nil {
			continue
		}
		out = append(out, Stored{Namespace: s.Metadata.Namespace, Name: s.Metadata.Name, Source: s.Metadata.Annotations[SourceAnnotation], Revision: kv.ModRevision})
	}
	return out, nil
}

// DeleteFrom removes namespace/name only if the stored service has source
// as its SourceAnnotation, when rev is not 0 is still at kvstore revision
// rev, and when uid is not "" has that UIDAnnotation or none; it reports
// whether it removed it. So a Kubernetes Service's deletion leaves a
// service stored with the CLI, a removal decided on an older read leaves
// a service stored again since, and a lagging delete event of an object
// leaves the service of one made again under its name.
func (m *Manager) DeleteFrom(ctx context.Context, namespace, name, source string, rev int64, uid string) (bool, error) {
	ours := func(s *Service) bool {
		su := s.Metadata.Annotations[UIDAnnotation]
		return s.Metadata.Annotations[SourceAnnotation] == source && (uid == "" || su == "" || su == uid)
	}
	if m.cfg.KV == nil {
		m.mu.Lock()
		defer m.mu.Unlock()
		key := namespace + "/" + name
		if s, ok := m.local[key]; !ok || !ours(s) {
			return false, nil
		}
		m.setLocalLocked(key, nil)
		return true, nil
	}
	key := Prefix + m.cfg.Cluster + "/" + namespace + "/" + name
	for range 3 {
		kv, err := m.cfg.KV.Get(ctx, key)
		if errors.Is(err, kvstore.ErrNotFound) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		if rev != 0 && kv.ModRevision != rev {
			return false, nil
		}
		if s, err := Parse(kv.Value); err != nil || !ours(s) {
			return false, nil
		}
		r, err := m.cfg.KV.Raw().Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)).
			Then(clientv3.OpDelete(key)).Commit()
		if err != nil {
			return false, fmt.Errorf("kvstore: txn: %w", err)
		}
		if r.Succeeded {
			m.waitApplied(ctx, r.Header.Revision)
			return true, nil
		}
		if rev != 0 {
			return false, nil
		}
		// Stored again between the read and the delete: read it again.
	}
	return false, fmt.Errorf("service %s/%s: changed at every try to delete it", namespace, name)
}

// Get returns one service's status.
func (m *Manager) Get(namespace, name string) (Status, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	st, ok := m.status[namespace+"/"+name]
	if !ok {
		return Status{}, fmt.Errorf("%w: %s/%s", ErrNotFound, namespace, name)
	}
	return st, nil
}

// List returns every service's status, sorted by namespace and name.
func (m *Manager) List() []Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Status, 0, len(m.status))
	for _, st := range m.status {
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b Status) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	return out
}

// Errors counts failed datapath writes (metrics).
func (m *Manager) Errors() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.errors
}

// Count is the number of local services.
func (m *Manager) Count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.local)
}
