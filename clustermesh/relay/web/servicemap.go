package web

import (
	"cmp"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	flowpb "github.com/filament-net/filament/agent/hubble/pb/flow"
)

// Map is the service map of a set of flows: workloads grouped by cluster
// and namespace, and the edges between them.
type Map struct {
	Clusters []Cluster `json:"clusters"`
	Edges    []Edge    `json:"edges"`
	Flows    int       `json:"flows"`   // flows drawn
	Omitted  int       `json:"omitted"` // flows left out: beyond the map's bounds, or without endpoints
}

// Cluster is one cluster's namespaces ("" holds the reserved identities
// seen from it: world, host, remote-node...).
type Cluster struct {
	Name       string      `json:"name"`
	Namespaces []Namespace `json:"namespaces"`
}

// Namespace is one namespace's workloads.
type Namespace struct {
	Name      string     `json:"name"`
	Workloads []Workload `json:"workloads"`
}

// Workload is a node of the map: a cluster's namespace's app (its app
// label, else its pods' common name prefix), or a reserved identity.
type Workload struct {
	ID       string   `json:"id"` // n0, n1... in the map's order
	Name     string   `json:"name"`
	Reserved bool     `json:"reserved,omitempty"`
	Pods     []string `json:"pods,omitempty"` // the first few seen, sorted
	Flows    int      `json:"flows"`
}

// Edge is the flows from one workload to another.
type Edge struct {
	Source      string         `json:"source"` // workload IDs
	Destination string         `json:"destination"`
	Verdicts    map[string]int `json:"verdicts"` // flows by verdict (FORWARDED, DROPPED...)
	Ports       []string       `json:"ports,omitempty"`
	L7          []Summary      `json:"l7,omitempty"` // the most frequent first
}

// Summary is one kind of L7 request on an edge ("GET /api 200") and how
// many were seen.
type Summary struct {
	Text  string `json:"text"`
	Count int    `json:"count"`
}

// The map's bounds: whatever the flows hold, it stays small enough for a
// page to draw.
const (
	maxWorkloads = 300
	maxEdges     = 1000
	maxPods      = 8   // names kept per workload
	maxPorts     = 8   // per edge
	maxL7Kinds   = 64  // distinct summaries counted per edge (the rest are "other")
	maxL7Shown   = 8   // per edge in the map
	maxText      = 120 // runes of a name or summary
)

type workloadKey struct {
	cluster, namespace, name string
	reserved                 bool
}

type edgeKey struct{ src, dst workloadKey }

type workload struct {
	pods  map[string]bool
	flows int
}

type edge struct {
	verdicts map[string]int
	ports    map[string]bool
	l7       map[string]int
}

// mapBuilder aggregates flows into a Map; the result depends only on the
// flows, in the order added.
type mapBuilder struct {
	workloads map[workloadKey]*workload
	edges     map[edgeKey]*edge
	flows     int
	omitted   int
}

func newMapBuilder() *mapBuilder {
	return &mapBuilder{workloads: map[workloadKey]*workload{}, edges: map[edgeKey]*edge{}}
}

// Add counts one flow.
func (b *mapBuilder) Add(f *flowpb.Flow) {
	if f.GetSource() == nil || f.GetDestination() == nil {
		b.omitted++
		return
	}
	src, dst := f.Source, f.Destination
	if f.GetIsReply().GetValue() {
		src, dst = dst, src // a reply: drawn as its request
	}
	cluster, _, _ := strings.Cut(f.NodeName, "/")
	if !strings.Contains(f.NodeName, "/") {
		cluster = ""
	}
	sk, dk := workloadOf(src, cluster), workloadOf(dst, cluster)
	ek := edgeKey{sk, dk}
	e := b.edges[ek]
	if e == nil {
		_, sok := b.workloads[sk]
		_, dok := b.workloads[dk]
		need := 0
		if !sok {
			need++
		}
		if !dok && dk != sk {
			need++
		}
		if len(b.edges) >= maxEdges || len(b.workloads)+need > maxWorkloads {
			b.omitted++
			return
		}
		e = &edge{verdicts: map[string]int{}, ports: map[string]bool{}, l7: map[string]int{}}
		b.edges[ek] = e
	}
	b.flows++
	for _, w := range []struct {
		k  workloadKey
		ep *flowpb.Endpoint
	}{{sk, src}, {dk, dst}} {
		wl := b.workloads[w.k]
		if wl == nil {
			wl = &workload{pods: map[string]bool{}}
			b.workloads[w.k] = wl
		}
		wl.flows++
		if p := clip(w.ep.GetPodName()); p != "" && !w.k.reserved && (len(wl.pods) < maxPods || wl.pods[p]) {
			wl.pods[p] = true
		}
	}
	e.verdicts[f.Verdict.String()]++
	if p := port(f); p != "" && (len(e.ports) < maxPorts || e.ports[p]) {
		e.ports[p] = true
	}
	if s := l7Summary(f); s != "" {
		if _, ok := e.l7[s]; !ok && len(e.l7) >= maxL7Kinds {
			s = "other"
		}
		e.l7[s]++
	}
}

// Map returns the map of the flows added: clusters, namespaces, workloads
// and edges in sorted order, workload IDs numbered in that order.
func (b *mapBuilder) Map() *Map {
	keys := make([]workloadKey, 0, len(b.workloads))
	for k := range b.workloads {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b workloadKey) int {
		return cmp.Or(cmp.Compare(a.cluster, b.cluster), cmp.Compare(a.namespace, b.namespace),
			compareBool(a.reserved, b.reserved), cmp.Compare(a.name, b.name))
	})
	m := &Map{Clusters: []Cluster{}, Edges: []Edge{}, Flows: b.flows, Omitted: b.omitted}
	index := map[workloadKey]int{}
	id := func(k workloadKey) string { return "n" + strconv.Itoa(index[k]) }
	for i, k := range keys {
		index[k] = i
		if n := len(m.Clusters); n == 0 || m.Clusters[n-1].Name != k.cluster {
			m.Clusters = append(m.Clusters, Cluster{Name: k.cluster})
		}
		c := &m.Clusters[len(m.Clusters)-1]
		if n := len(c.Namespaces); n == 0 || c.Namespaces[n-1].Name != k.namespace {
			c.Namespaces = append(c.Namespaces, Namespace{Name: k.namespace})
		}
		ns := &c.Namespaces[len(c.Namespaces)-1]
		wl := b.workloads[k]
		ns.Workloads = append(ns.Workloads, Workload{ID: id(k), Name: k.name, Reserved: k.reserved, Pods: sortedKeys(wl.pods), Flows: wl.flows})
	}
	edges := make([]edgeKey, 0, len(b.edges))
	for k := range b.edges {
		edges = append(edges, k)
	}
	slices.SortFunc(edges, func(a, b edgeKey) int {
		return cmp.Or(cmp.Compare(index[a.src], index[b.src]), cmp.Compare(index[a.dst], index[b.dst]))
	})
	for _, k := range edges {
		e := b.edges[k]
		out := Edge{Source: id(k.src), Destination: id(k.dst), Verdicts: e.verdicts, Ports: sortedKeys(e.ports)}
		for s, n := range e.l7 {
			out.L7 = append(out.L7, Summary{Text: s, Count: n})
		}
		slices.SortFunc(out.L7, func(a, b Summary) int { return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(a.Text, b.Text)) })
		if len(out.L7) > maxL7Shown {
			out.L7 = out.L7[:maxL7Shown]
		}
		m.Edges = append(m.Edges, out)
	}
	return m
}

func compareBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

func sortedKeys(m map[string]bool) []string {
	if len(m) == 0 {
		return nil
	}
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// reservedNames are the reserved identities' names (Cilium's numbers,
// agent/identity's too), for an endpoint whose labels do not say.
var reservedNames = map[uint32]string{1: "host", 2: "world", 3: "unmanaged", 4: "health", 5: "init", 6: "remote-node", 7: "kube-apiserver", 8: "ingress"}

// workloadOf names an endpoint's workload: a reserved identity by its
// name; else, in its cluster (its identity's cluster label, else the
// endpoint's cluster, else the flow's node's) and namespace, its app label, else its pod's name without the
// suffixes Kubernetes adds, else its identity.
func workloadOf(ep *flowpb.Endpoint, nodeCluster string) workloadKey {
	k := workloadKey{cluster: ep.ClusterName, namespace: ep.Namespace}
	var app, name, k8sApp, idCluster string
	for _, l := range ep.Labels {
		key, val, _ := strings.Cut(l, "=")
		src, rest, ok := strings.Cut(key, ":")
		if ok && src == "reserved" {
			k.reserved, k.name = true, rest
			continue
		}
		if ok {
			key = rest
		}
		switch key {
		case "app":
			app = val
		case "app.kubernetes.io/name":
			name = val
		case "k8s-app":
			k8sApp = val
		case "io.kubernetes.pod.namespace":
			if k.namespace == "" {
				k.namespace = val
			}
		case "filament.io/cluster", "io.cilium.k8s.policy.cluster":
			idCluster = val
		}
	}
	k.cluster = cmp.Or(idCluster, k.cluster, nodeCluster)
	if !k.reserved {
		if n, ok := reservedNames[ep.Identity]; ok {
			k.reserved, k.name = true, n
		} else if ep.Identity > 0 && ep.Identity < 256 {
			k.reserved, k.name = true, "reserved-"+strconv.Itoa(int(ep.Identity))
		}
	}
	if k.reserved {
		k.namespace = ""
		k.name = clip(k.name)
		return k
	}
	k.name = cmp.Or(name, app, k8sApp, podWorkload(ep.PodName))
	if k.name == "" {
		k.name = "identity " + strconv.Itoa(int(ep.Identity))
	}
	k.namespace, k.name = clip(k.namespace), clip(k.name)
	k.cluster = clip(k.cluster)
	return k
}

// podWorkload is a pod's name without what Kubernetes appends to its
// controller's name: a StatefulSet's ordinal, a ReplicaSet's or
// DaemonSet's random 5 characters, a Deployment's pod-template hash
// (both of the alphabet Kubernetes draws them from).
func podWorkload(pod string) string {
	parts := strings.Split(pod, "-")
	if n := len(parts); n > 1 && (isDigits(parts[n-1]) || len(parts[n-1]) == 5 && isKubeRandom(parts[n-1])) {
		parts = parts[:n-1]
		if n := len(parts); n > 1 && len(parts[n-1]) >= 6 && len(parts[n-1]) <= 10 && isKubeRandom(parts[n-1]) {
			parts = parts[:n-1]
		}
	}
	return strings.Join(parts, "-")
}

func isDigits(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}

// isKubeRandom: the alphabet of Kubernetes' generated names (no vowels).
func isKubeRandom(s string) bool {
	return s != "" && strings.Trim(s, "bcdfghjklmnpqrstvwxz2456789") == ""
}

// port is a flow's destination port and protocol ("TCP/80"), or its L4
// protocol alone.
func port(f *flowpb.Flow) string {
	l4 := f.GetL4()
	switch {
	case l4.GetTCP() != nil:
		return fmt.Sprintf("TCP/%d", l4.GetTCP().DestinationPort)
	case l4.GetUDP() != nil:
		return fmt.Sprintf("UDP/%d", l4.GetUDP().DestinationPort)
	case l4.GetSCTP() != nil:
		return fmt.Sprintf("SCTP/%d", l4.GetSCTP().DestinationPort)
	case l4.GetICMPv4() != nil:
		return "ICMPv4"
	case l4.GetICMPv6() != nil:
		return "ICMPv6"
	}
	return ""
}

// l7Summary is one line for an L7 flow: "GET /api 200" (the URL's path,
// without its query), "DNS www.example.com A", "Kafka produce orders".
func l7Summary(f *flowpb.Flow) string {
	l := f.GetL7()
	var s string
	switch {
	case l.GetHttp() != nil:
		h := l.GetHttp()
		path := h.Url
		if u, err := url.Parse(h.Url); err == nil {
			path = u.EscapedPath()
		} else if i := strings.IndexAny(path, "?#"); i >= 0 {
			path = path[:i]
		}
		s = strings.TrimSpace(h.Method + " " + clipN(path, 60))
		if h.Code != 0 {
			s += " " + strconv.Itoa(int(h.Code))
		}
	case l.GetDns() != nil:
		d := l.GetDns()
		s = "DNS " + strings.TrimSuffix(d.Query, ".")
		if len(d.Qtypes) > 0 {
			s += " " + strings.Join(d.Qtypes, ",")
		}
		if d.Rcode != 0 {
			s += " rcode " + strconv.Itoa(int(d.Rcode))
		}
	case l.GetKafka() != nil:
		k := l.GetKafka()
		s = strings.TrimSpace("Kafka " + k.ApiKey + " " + k.Topic)
	default:
		return ""
	}
	return clip(s)
}

func clip(s string) string { return clipN(s, maxText) }

// clipN keeps the first n runes of s (a valid UTF-8 string whatever s held).
func clipN(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}
