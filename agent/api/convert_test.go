package api

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/api/types"
	"github.com/filament-net/filament/agent/endpoint"
	"github.com/filament-net/filament/agent/groups"
	"github.com/filament-net/filament/agent/labels"
	"github.com/filament-net/filament/agent/monitor"
	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/agent/policy"
	policyapi "github.com/filament-net/filament/agent/policy/api"
	"github.com/filament-net/filament/agent/service"
	"github.com/filament-net/filament/clustermesh/remote"
	"github.com/filament-net/filament/crypto/nodeauth"
	"github.com/filament-net/filament/crypto/wireguard"
)

// sameJSON checks that the wire value marshals exactly as the domain value
// did on the wire before the contract had types of its own, and that a
// client decoding that JSON into the wire type marshals it back unchanged.
func sameJSON[W any](t *testing.T, what string, domain any, wire W) {
	t.Helper()
	want, err := json.Marshal(domain)
	if err != nil {
		t.Fatal(err)
	}
	got, err := json.Marshal(wire)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s: wire JSON differs\n got %s\nwant %s", what, got, want)
	}
	var back W
	if err := json.Unmarshal(want, &back); err != nil {
		t.Fatalf("%s: decode: %v", what, err)
	}
	if again, _ := json.Marshal(back); !bytes.Equal(again, want) {
		t.Errorf("%s: decoded and re-encoded JSON differs\n got %s\nwant %s", what, again, want)
	}
}

var (
	t0 = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	a1 = netip.MustParseAddr("10.0.0.5")
	a2 = netip.MustParseAddr("10.0.0.1")
)

func TestWireJSONUnchanged(t *testing.T) {
	ep := endpoint.Endpoint{ID: 5, ContainerID: "c", IfName: "eth0", NetNS: "/n", Network: "filament", Namespace: "prod", PodName: "p",
		Labels: labels.Labels{{Source: "k8s", Key: "app", Value: "web"}, {Source: "container", Key: "x"}}, Identity: 70000,
		IPv4: a1, Gateway: a2, PrefixLen: 24, MAC: "m", HostIfName: "h", HostIfIndex: 7, HostMAC: "hm", MTU: 1450,
		State: endpoint.StateReady, Created: t0}
	sameJSON(t, "endpoint", ep, wireEndpoint(ep))
	sameJSON(t, "endpoint, zero", endpoint.Endpoint{}, wireEndpoint(endpoint.Endpoint{}))
	sameJSON(t, "endpoints, nil", []endpoint.Endpoint(nil), each([]endpoint.Endpoint(nil), wireEndpoint))
	sameJSON(t, "endpoints, empty", []endpoint.Endpoint{}, each([]endpoint.Endpoint{}, wireEndpoint))
	req := endpoint.CreateRequest{ContainerID: "c", IfName: "eth0", NetNS: "/n", Network: "n", Namespace: "ns", PodName: "p", Labels: []string{"k8s:a=b"}}
	sameJSON(t, "endpoint request", req, types.EndpointRequest(req))

	ev := monitor.Event{Time: t0, Type: "drop", Reason: "policy denied", ReasonCode: 133, Direction: "ingress", Endpoint: 5, PeerEP: 6,
		SrcIdentity: 300, DstIdentity: 301, SrcLabels: []string{"k8s:a=b"}, DstLabels: []string{"k8s:c=d"},
		Src: netip.AddrPortFrom(a1, 1), Dst: netip.AddrPortFrom(a2, 2), Protocol: "TCP", IfIndex: 3, Length: 60}
	sameJSON(t, "event", ev, wireEvent(ev))
	sameJSON(t, "event, zero", monitor.Event{}, wireEvent(monitor.Event{}))

	n := node.Node{Name: "n1", Cluster: "c1", ClusterID: 1, IPs: []string{"192.0.2.1"}, PodCIDRs: []string{"10.0.0.0/24"}, Routing: "tunnel",
		Health: "ok", Labels: map[string]string{"zone": "a"}, WireGuardKey: "k", Certificate: "cert", Signature: "sig", Reachable: true}
	sameJSON(t, "node", n, wireNode(n))
	sameJSON(t, "node, zero", node.Node{}, wireNode(node.Node{}))

	rs := remote.Status{Name: "c2", ClusterID: 2, Configured: true, Connected: true, Ready: true, Withdrawn: true, Nodes: 1, Endpoints: 2,
		Identities: 3, Services: 4, Rejected: 5, LastFailure: "f", FailureTime: t0, Since: t0, TTL: "5m0s", LostSince: t0, HeartbeatAge: "1s",
		CanaryStale: true, TTLLeft: "4m", Upserts: 6, Deletes: 7, Via: "cache", CacheConnected: true, CacheRejected: 8, CacheLastFailure: "g"}
	sameJSON(t, "cluster", rs, wireCluster(rs))
	sameJSON(t, "cluster, zero", remote.Status{}, wireCluster(remote.Status{}))

	tr := policy.TraceResult{Verdict: "denied", Reason: "r", Rule: &policy.RuleRef{Policy: "default/p", Rule: 1, Section: "ingressDeny[0]"}, Enforced: true}
	sameJSON(t, "trace", tr, wireTrace(tr))
	sameJSON(t, "trace, zero", policy.TraceResult{}, wireTrace(policy.TraceResult{}))
	tr.Proxy, tr.L7 = true, []policy.TraceL7{{Side: "ingress of dst", Rules: []policy.TraceHTTPRule{{Ref: "default/p/rules[0].ingress[0].toPorts[0]",
		PortRuleHTTP: policyapi.PortRuleHTTP{Method: "GET", Path: "/p", Host: "h", Headers: []string{"X-A"},
			HeaderMatches: []policyapi.HeaderMatch{{Name: "X-B", Value: "v", Mismatch: "LOG"}}}}}}}
	sameJSON(t, "trace, L7", tr, wireTrace(tr))

	gr := groups.Result{Key: "k", Group: policyapi.AWSGroup{Labels: map[string]string{"a": "b"}, SecurityGroupsIDs: []string{"sg-1"},
		SecurityGroupsNames: []string{"web"}, Region: "eu"}, Addrs: []netip.Addr{a1}, Resolved: true, Refreshed: t0, Error: "e", Failures: 2, Since: t0}
	gs := groups.Status{Enabled: true, Leader: "n1", IsLeader: true, Interval: "1m", Groups: []groups.Result{gr, {}}, Refused: 3}
	sameJSON(t, "groups", gs, wireGroups(gs))
	sameJSON(t, "groups, zero", groups.Status{}, wireGroups(groups.Status{}))
}

// The encryption status and the policy view were wire types of their own
// embedding domain types; these are their shapes before the contract.
type (
	legacyEncryptionStatus struct {
		Mode           string                 `json:"mode"`
		Strict         bool                   `json:"strict"`
		Device         string                 `json:"device,omitempty"`
		Type           string                 `json:"type,omitempty"`
		PublicKey      string                 `json:"publicKey,omitempty"`
		Port           int                    `json:"port,omitempty"`
		Peers          []wireguard.PeerStatus `json:"peers"`
		StrictDrops    uint64                 `json:"strictDrops"`
		Authentication bool                   `json:"authentication"`
		Refused        []nodeauth.Refusal     `json:"refused"`
	}
	legacyPolicyView struct {
		policyapi.Policy
		Scope         string          `json:"scope,omitempty"`
		ClusterWide   bool            `json:"clusterWide,omitempty"`
		DerivedGroups []groups.Result `json:"derivedGroups,omitempty"`
	}
)

func TestWireJSONUnchangedEncryption(t *testing.T) {
	st := EncryptionStatus{Mode: "wireguard", Strict: true, Device: "filament_wg", Type: "kernel", PublicKey: "pk", Port: 51871,
		Peers: []wireguard.PeerStatus{{Name: "n2", PublicKey: "k2", Endpoint: "192.0.2.2:51871", AllowedIPs: []string{"10.0.1.0/24"},
			LastHandshake: t0, RxBytes: 1, TxBytes: 2}, {}},
		StrictDrops: 3, Authentication: true, Refused: []nodeauth.Refusal{{Node: "c2/n1", Reason: "bad", Since: t0}}}
	sameJSON(t, "encryption", legacyEncryptionStatus(st), wireEncryption(st))
	sameJSON(t, "encryption, zero", legacyEncryptionStatus{}, wireEncryption(EncryptionStatus{}))
	none := EncryptionStatus{Peers: []wireguard.PeerStatus{}, Refused: []nodeauth.Refusal{}}
	sameJSON(t, "encryption, empty lists", legacyEncryptionStatus(none), wireEncryption(none))
}

const wirePolicyDoc = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: prod, labels: {a: b}, annotations: {c: d}}
spec:
  endpointSelector: {matchLabels: {app: web}, matchExpressions: [{key: tier, operator: In, values: [front]}]}
  enableDefaultDeny: {egress: false}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET, path: /}]}}]
  - fromEndpoints: []
  - fromCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]
    icmps: [{fields: [{type: 8}, {family: IPv6, type: EchoRequest}]}]
  egress:
  - toFQDNs: [{matchName: example.com}]
    toServices: [{k8sService: {serviceName: db}}]
  - toGroups: [{aws: {securityGroupsIds: [sg-1], region: eu}}]
  egressDeny:
  - toEntities: [world]
`

func TestWireJSONUnchangedPolicy(t *testing.T) {
	ps, err := policyapi.Parse([]byte(wirePolicyDoc))
	if err != nil {
		t.Fatal(err)
	}
	wire, err := viaJSON[[]types.Policy](ps)
	if err != nil {
		t.Fatal(err)
	}
	sameJSON(t, "policies", ps, wire)
	if wire[0].Key() != ps[0].Key() || wire[0].Clusterwide() != ps[0].Clusterwide() || len(wire[0].Rules) != len(ps[0].Rules) {
		t.Fatalf("policy %q: key %q, %d rules", ps[0].Key(), wire[0].Key(), len(wire[0].Rules))
	}
	gr := groups.Result{Key: "k", Addrs: []netip.Addr{a1}, Resolved: true}
	v := types.PolicyView{Policy: wire[0], Scope: "cluster", ClusterWide: true, DerivedGroups: []types.GroupResult{wireGroup(gr)}}
	sameJSON(t, "policy view", legacyPolicyView{Policy: ps[0], Scope: "cluster", ClusterWide: true, DerivedGroups: []groups.Result{gr}}, v)
}

const wireServiceDoc = `apiVersion: filament.io/v1
kind: Service
metadata: {name: api, namespace: shop, annotations: {service.cilium.io/global: "true"}}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}, {name: dns, protocol: UDP, port: 53}]
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  loadBalancerAlgorithm: maglev
backends:
- {ip: 10.0.0.5, ports: {http: 8081}, state: terminating, node: n1, cluster: c1}
- {ip: 10.0.0.6}
`

func TestWireJSONUnchangedService(t *testing.T) {
	svc, err := service.Parse([]byte(wireServiceDoc))
	if err != nil {
		t.Fatal(err)
	}
	ws, err := viaJSON[types.Service](svc)
	if err != nil {
		t.Fatal(err)
	}
	sameJSON(t, "service", svc, ws)
	if ws.Key() != svc.Key() {
		t.Fatalf("key %q, want %q", ws.Key(), svc.Key())
	}
	fes := svc.Frontends([]netip.Addr{a2})
	opts := svc.Options()
	opts.Affinity, opts.Failover = service.AffinityLocal, service.FailoverGraded
	st := service.Status{Namespace: "shop", Name: "api", Type: "NodePort", Options: opts, Algorithm: "maglev", AffinityTimeout: 60,
		Clusters: []string{"c1"}, Spec: svc, Frontends: []service.FrontendStatus{
			{Frontend: fes[0], Backends: []service.BackendView{{Addr: netip.AddrPortFrom(a1, 8081), Cluster: "c1", Node: "n1", State: "active", Healthy: true, Preferred: true}},
				Split: &service.Split{LocalHealth: 0.42, RemoteHealth: 1, Slots: 1000, Clusters: []service.ClusterShare{
					{Cluster: "c1", Healthy: 3, Total: 10, Share: 0.42, Slots: 420}, {Cluster: "c2", Healthy: 2, Total: 2, Share: 0.58, Slots: 580}}}},
			{Frontend: fes[1], Backends: []service.BackendView{}}}}
	wst, err := viaJSON[[]types.ServiceStatus]([]service.Status{st, {}})
	if err != nil {
		t.Fatal(err)
	}
	sameJSON(t, "service status", []service.Status{st, {}}, wst)
	if got, want := wst[0].Frontends[0].String(), st.Frontends[0].String(); got != want {
		t.Fatalf("frontend %q, want %q", got, want)
	}
}
