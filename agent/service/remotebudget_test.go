package service

import (
	"context"
	"fmt"
	"strings"
	"testing"
)

// remoteWith is a remote cluster's global service "name" (default
// namespace) with n backends at 10.<b>.x.y, all active.
func remoteWith(t *testing.T, name string, b, n int) *Service {
	t.Helper()
	var bs strings.Builder
	for i := range n {
		fmt.Fprintf(&bs, "- {ip: 10.%d.%d.%d, node: m1}\n", b, i/250, i%250+1)
	}
	return mustParse(t, `
metadata:
  name: `+name+`
  annotations: {service.cilium.io/global: "true"}
spec:
  clusterIP: 10.100.0.10
  ports:
  - {name: http, port: 8000, targetPort: 9090}
backends:
`+bs.String())
}

// localGlobal is this cluster's global service "name" at clusterIP ip
// with one backend, on port 80 unless a ports entry is given.
func localGlobal(t *testing.T, m *Manager, name, ip string, port ...string) {
	t.Helper()
	p, typ := "{name: http, port: 80, targetPort: 8080}", ""
	if len(port) > 0 {
		p = port[0]
	}
	if strings.Contains(p, "nodePort") {
		typ = "\n  type: NodePort"
	}
	upsert(t, m, `
metadata:
  name: `+name+`
  annotations: {service.cilium.io/global: "true"}
spec:`+typ+`
  clusterIP: `+ip+`
  ports:
  - `+p+`
backends:
- {ip: 10.0.1.1, node: n1}
`)
}

// Remote clusters' backends of global services hold at most
// maxRemoteBackends of a node's load-balancer maps together, so the rest
// stays for this cluster's services: a remote publishing the largest
// services it may (65,535 backends each) behind a few of this cluster's
// global services cannot fill lb_slots and lb_members (262,144 each),
// after which every later service write of every namespace failed. A
// frontend keeps its local backends whatever the remotes hold, and a
// remote backend that goes frees its place for those left out before.
// Found 2026-12-06 by reading the mesh's limits against the maps.
func TestRemoteBackendsLeaveRoomForLocalOnes(t *testing.T) {
	m, dp := newManager(t, "")
	m.maxRemoteBackends = 10
	localGlobal(t, m, "a", "10.96.0.1")
	localGlobal(t, m, "b", "10.96.0.2")
	m.RemoteChanged("c2", remoteWith(t, "a", 2, 8), false)
	m.RemoteChanged("c2", remoteWith(t, "b", 3, 8), false)
	count := func() (remote int, local map[string]int) {
		local = map[string]int{}
		svcs, _ := dp.snapshot()
		for fe, s := range svcs {
			for _, b := range s.Backends {
				if b.IP.As4()[1] == 0 {
					local[fe.String()]++
				} else {
					remote++
				}
			}
		}
		return remote, local
	}
	r, l := count()
	if r != 10 {
		t.Fatalf("remote backends in the datapath: %d, want 10 (the bound)", r)
	}
	if len(l) != 2 || l["10.96.0.1:80/tcp"] != 1 || l["10.96.0.2:80/tcp"] != 1 {
		t.Fatalf("local backends: %v, want one in each frontend", l)
	}
	if got := m.RemoteBackendsLeftOut(); got == 0 {
		t.Error("no remote backend counted as left out")
	}
	// A third local global service gets its own backend, and no remote.
	localGlobal(t, m, "c", "10.96.0.3")
	m.RemoteChanged("c2", remoteWith(t, "c", 4, 3), false)
	if r, l = count(); r != 10 || l["10.96.0.3:80/tcp"] != 1 {
		t.Fatalf("after a third service: %d remote backends, local %v", r, l)
	}
	// a's remote backends go: the places go to those left out before
	// (b's first, then c's, in order of service).
	m.RemoteChanged("c2", remoteWith(t, "a", 2, 0), true)
	svcs, _ := dp.snapshot()
	for fe, n := range map[string]int{"10.96.0.1:80/tcp": 1, "10.96.0.2:80/tcp": 9, "10.96.0.3:80/tcp": 3} {
		found := false
		for f, s := range svcs {
			if f.String() == fe {
				found = true
				if len(s.Backends) != n {
					t.Errorf("%s holds %d backends after a's remote ones went, want %d", fe, len(s.Backends), n)
				}
			}
		}
		if !found {
			t.Errorf("%s not in the datapath", fe)
		}
	}
	if r, _ = count(); r != 10 {
		t.Errorf("remote backends after a's went: %d, want 10 (the bound)", r)
	}
	if got := m.RemoteBackendsLeftOut(); got != 1 {
		t.Errorf("left out after the refill: %d, want 1 (c's third)", got)
	}
}

// remoteListed counts the remote backends (10.x with x > 0) each frontend
// of the datapath lists, by frontend.
func remoteListed(dp *fakeDP) (total int, by map[string]int) {
	by = map[string]int{}
	svcs, _ := dp.snapshot()
	for fe, s := range svcs {
		for _, b := range s.Backends {
			if b.IP.As4()[1] != 0 {
				by[fe.String()]++
				total++
			}
		}
	}
	return total, by
}

// The bound follows what the datapath's entries list through the
// changes a node sees: re-applying every service (a node's liveness) at
// the bound takes nothing from anyone; a service whose port changes keeps
// its share (its old frontend's places are its own); a NodePort service
// counts each of its frontends; a local service deleted frees its places
// for the services left short. Found by the review of the bound: a port
// change handed the service's share to a neighbour.
func TestRemoteBackendsBudgetFollowsChanges(t *testing.T) {
	m, dp := newManager(t, "")
	m.maxRemoteBackends = 12
	localGlobal(t, m, "b", "10.96.0.2")
	m.RemoteChanged("c2", remoteWith(t, "b", 3, 8), false)
	localGlobal(t, m, "a", "10.96.0.1")
	m.RemoteChanged("c2", remoteWith(t, "a", 2, 8), false)
	for _, step := range []string{"at first", "after every service was applied again"} {
		if total, by := remoteListed(dp); total != 12 || by["10.96.0.2:80/tcp"] != 8 || by["10.96.0.1:80/tcp"] != 4 {
			t.Fatalf("%s: remote backends listed: %d %v, want b 8 and a 4", step, total, by)
		}
		m.NodeAlive("c1", "n1", false)
		m.NodeAlive("c1", "n1", true)
	}
	// b's port changes: its new frontend lists what its old one did.
	localGlobal(t, m, "b", "10.96.0.2", "{name: http, port: 81, targetPort: 8080}")
	if total, by := remoteListed(dp); total != 12 || by["10.96.0.2:81/tcp"] != 8 || by["10.96.0.1:80/tcp"] != 4 {
		t.Fatalf("after b's port changed: %d %v, want b 8 (on its new port) and a 4", total, by)
	}
	// A NodePort service: a frontend per node address besides its
	// ClusterIP, each counting; deleted, its places go to a.
	localGlobal(t, m, "b", "10.96.0.2", "{name: http, port: 81, targetPort: 8080, nodePort: 30081}")
	total, by := remoteListed(dp)
	if total != 12 || by["10.96.0.1:80/tcp"] != 4 {
		t.Fatalf("with b a NodePort service: %d %v, want 12 with a's 4", total, by)
	}
	if err := m.Delete(context.Background(), "default", "b"); err != nil {
		t.Fatal(err)
	}
	if total, by := remoteListed(dp); total != 8 || by["10.96.0.1:80/tcp"] != 8 {
		t.Fatalf("after b was deleted: %d %v, want a's 8", total, by)
	}
	if got := m.RemoteBackendsLeftOut(); got != 0 {
		t.Errorf("left out with room for all: %d", got)
	}
}

// The node's remote-backend room is shared between the remote clusters
// of a frontend, usable backends first (remoteShares): a remote named
// aaa publishing 100 terminating backends into a room of 100 left a
// healthy bravo out of a graded frontend whose local level, 3 of 10
// healthy, then took every new connection instead of 42%.
func TestRemoteBackendsRoomSharedBetweenClusters(t *testing.T) {
	m, _ := newManager(t, "")
	m.maxRemoteBackends = 100
	local := mkSvc(t, annGraded, httpPort, local3of10()...)
	local.Metadata.Namespace = "default"
	if err := m.Upsert(context.Background(), local); err != nil {
		t.Fatal(err)
	}
	for c, r := range map[string]*Service{"aaa": remoteSvcN(t, "10.2", 100, StateTerminating), "bravo": remoteSvcN(t, "10.3", 10, "")} {
		r.Metadata.Namespace = "default"
		m.RemoteChanged(c, r, false)
	}
	st, err := m.Get("default", "web")
	if err != nil {
		t.Fatal(err)
	}
	if got := shares(*st.Frontends[0].Split); got != "c1 3/10 420000, aaa 0/100 0, bravo 10/10 580000" {
		t.Errorf("split %s", got)
	}
}

// The node's remote-backend room is shared between frontends too: a
// remote's backends that take no new connections (terminating,
// maintenance, on a dead node) may not use up room another service needs
// for usable ones. Until a review found it a remote evil publishing 100
// terminating backends for web filled a room of 100 (bravo's 10 usable
// first, then 90 of evil's), so api's bravo backends were left out and
// its local level, 3 of 10 healthy, took every new connection instead
// of 42% (when evil came first). A frontend now lists at
// most as many of those as it lists usable remote backends, and none
// while its own bound binds.
func TestRemoteNonUsableBackendsLeaveRoomForOtherServices(t *testing.T) {
	for _, order := range []string{"evil first", "bravo first"} {
		t.Run(order, func(t *testing.T) {
			m, _ := newManager(t, "")
			m.maxRemoteBackends = 100
			for i, name := range []string{"web", "api"} {
				local := mkSvc(t, annGraded, httpPort, local3of10()...)
				local.Metadata.Namespace, local.Metadata.Name = "default", name
				local.Spec.ClusterIP = fmt.Sprintf("10.96.0.%d", 10+i)
				if err := m.Upsert(context.Background(), local); err != nil {
					t.Fatal(err)
				}
			}
			remote := func(name, prefix string, n int, state string) *Service {
				r := remoteSvcN(t, prefix, n, state)
				r.Metadata.Namespace, r.Metadata.Name = "default", name
				return r
			}
			evil := func() { m.RemoteChanged("evil", remote("web", "10.6", 100, StateTerminating), false) }
			if order == "evil first" {
				evil()
			}
			m.RemoteChanged("bravo", remote("web", "10.3", 10, ""), false)
			m.RemoteChanged("bravo", remote("api", "10.4", 10, ""), false)
			if order != "evil first" {
				evil()
			}
			for _, name := range []string{"web", "api"} {
				st, err := m.Get("default", name)
				if err != nil {
					t.Fatal(err)
				}
				sp := *st.Frontends[0].Split
				var bravo ClusterShare
				for _, c := range sp.Clusters {
					if c.Cluster == "bravo" {
						bravo = c
					}
				}
				if sp.Clusters[0].ppm != 420000 || bravo.Healthy != 10 || bravo.ppm != 580000 {
					t.Errorf("%s: split %s, want local 42%% and bravo's 10 58%%", name, shares(sp))
				}
			}
		})
	}
}

// A remote cluster's health is its published backends', whatever the
// node's room lets a frontend list of them: listing usable backends
// first (and at most as many others) made the listed ones look
// healthier than the cluster is, and nodes with different rooms built
// different splits. Until a review found it bravo, 10 active and 990
// terminating, had health 0.70 with a room of 20 and 0.014 with 1,000 or
// more; it is 0.014 (10 of 1,000) at every room, and the status counts
// bravo's 1,000.
func TestGradedRemoteHealthDoesNotChangeWithTheRoom(t *testing.T) {
	bravo := remoteSvcN(t, "10.3", 1000, StateTerminating)
	for i := range 10 {
		bravo.Backends[i].State = ""
	}
	bravo.Metadata.Namespace = "default"
	for _, room := range []int{20, 100, 1000, 5000} {
		m, _ := newManager(t, "")
		m.maxRemoteBackends = room
		local := mkSvc(t, annGraded, httpPort, local3of10()...)
		local.Metadata.Namespace = "default"
		if err := m.Upsert(context.Background(), local); err != nil {
			t.Fatal(err)
		}
		m.RemoteChanged("bravo", bravo, false)
		st, err := m.Get("default", "web")
		if err != nil {
			t.Fatal(err)
		}
		sp := *st.Frontends[0].Split
		want := loads([]uint32{420000, 14000})
		if sp.RemoteHealth != 0.014 || len(sp.Clusters) != 2 || sp.Clusters[1].Healthy != 10 || sp.Clusters[1].Total != 1000 ||
			sp.Clusters[0].ppm != want[0] || sp.Clusters[1].ppm != want[1] {
			t.Errorf("room %d: remote health %v, split %s; want 0.014, c1 3/10 %d, bravo 10/1000 %d", room, sp.RemoteHealth, shares(sp), want[0], want[1])
		}
	}
}
