package daemon

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"github.com/filament-net/filament/agent/config"
	"github.com/filament-net/filament/agent/enforcement"
	"github.com/filament-net/filament/agent/groups"
	"github.com/filament-net/filament/agent/labels"
	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/agent/policy"
	"github.com/filament-net/filament/agent/policy/api"
	"github.com/filament-net/filament/cloud/aws"
)

// awsSource adapts the EC2 resolver to the groups manager.
type awsSource struct{ r *aws.Resolver }

func (s awsSource) Resolve(ctx context.Context, g api.AWSGroup) ([]netip.Addr, error) {
	return s.r.Resolve(ctx, aws.Group{Labels: g.Labels, SecurityGroupIDs: g.SecurityGroupsIDs,
		SecurityGroupNames: g.SecurityGroupsNames, Region: g.Region})
}

// cloudGroups is the groups manager with what the API needs of it.
type cloudGroups struct {
	*groups.Manager
	res *policy.Resolver
}

// Derived lists the groups p names with their resolution, and says so
// of a group refused in p's namespace (its addresses past the
// namespace's prefix budget or the policies' ipcache share).
func (c cloudGroups) Derived(p api.Policy) []groups.Result {
	var out []groups.Result
	add := func(gs []api.Groups) {
		for _, g := range gs {
			if g.AWS == nil {
				continue
			}
			key := api.GroupKey(*g.AWS)
			r, ok := c.Result(key)
			if !ok {
				r = groups.Result{Key: key, Group: *g.AWS, Error: "not resolved yet (an allow selects nothing of it, a deny denies world on its ports)"}
				if !c.res.GroupsLoaded() {
					// As the resolver decides (resolve.go): before the
					// stored results load, a deny naming it denies nothing.
					r.Error = "not loaded yet: the stored group results are loading (an allow selects nothing of it, a deny denies nothing until they load)"
				}
			}
			if why, refused := c.res.GroupRefused(p.Namespace, key); refused {
				where := "namespace " + p.Namespace
				if p.Namespace == "" {
					where = "clusterwide policies"
				}
				r.Error = "refused in " + where + ": " + why + " (an allow selects nothing of it, a deny denies world on its ports)"
			}
			out = append(out, r)
		}
	}
	for _, r := range p.Rules {
		for _, in := range r.Ingress {
			add(in.FromGroups)
		}
		for _, in := range r.IngressDeny {
			add(in.FromGroups)
		}
		for _, e := range r.Egress {
			add(e.ToGroups)
		}
		for _, e := range r.EgressDeny {
			add(e.ToGroups)
		}
	}
	return out
}

// startCloudGroups follows the cluster's cloud groups; with AWS configured
// this agent also takes part in electing the one that resolves them.
func (a *Agent) startCloudGroups(ctx context.Context) cloudGroups {
	cfg, res := a.cfg, a.res
	var src groups.Source
	if awsConfigured(cfg) {
		r, err := aws.New(ctx, aws.Config{Region: cfg.AWSRegion, Endpoint: cfg.AWSEndpoint, VPCIDs: cfg.AWSVPCIDs,
			NodeVPC: func(ctx context.Context) (string, error) {
				md, err := aws.ReadNodeMetadata(ctx, cfg.AWSIMDSEndpoint)
				return md.VPCID, err
			}})
		if err != nil {
			slog.Warn("AWS groups are off: "+err.Error(), "err", err)
		} else {
			src = awsSource{r}
			slog.Info("AWS groups on: toGroups/fromGroups resolve through EC2, in this node's VPC and --aws-vpc-ids", "region", cfg.AWSRegion, "endpoint", cfg.AWSEndpoint, "vpcs", cfg.AWSVPCIDs)
		}
	} else {
		slog.Info("AWS groups are off: no AWS region configured (--aws-region or AWS_REGION); toGroups/fromGroups select nothing, and a deny naming one denies world on its ports")
	}
	m := groups.New(ctx, groups.Config{KV: a.kv, Lease: a.lease, Cluster: cfg.ClusterName, Node: cfg.NodeName, Source: src,
		Interval: time.Duration(cfg.GroupsRefreshInterval), Apply: a.engine.GroupChanged,
		Refuse: a.engine.GroupRefused, Drop: a.engine.GroupDropped})
	a.goroutine(func() {
		select {
		case <-m.Synced():
			a.engine.GroupsLoaded()
		case <-ctx.Done():
		}
	})
	// Publish the selectors the policies use whenever they change.
	a.goroutine(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			m.SetWanted(ctx, res.GroupsInUse())
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
	return cloudGroups{m, res}
}

// awsConfigured says whether the AWS features are on.
func awsConfigured(cfg config.Config) bool {
	return cfg.AWSRegion != "" || os.Getenv("AWS_REGION") != "" || os.Getenv("AWS_DEFAULT_REGION") != ""
}

// ec2NodeLabels reads this node's EC2 metadata (IMDSv2) as node labels
// when AWS is configured; off EC2 it says so once and returns none.
func ec2NodeLabels(ctx context.Context, cfg config.Config) map[string]string {
	if !awsConfigured(cfg) {
		return nil
	}
	md, err := aws.ReadNodeMetadata(ctx, cfg.AWSIMDSEndpoint)
	if err != nil {
		slog.Info("no EC2 node metadata (not on EC2?): node labels stay empty", "err", err)
		return nil
	}
	return md.Labels()
}

// states counts the groups by state for the metrics; refused counts
// the stored results not applied (groups.Status.Refused), over-budget
// the groups refused in a namespace (one per namespace refusing it).
// A group this agent's policies name with no stored result yet (the
// cloud API failing at its first resolution, no AWS region, or the
// results not loaded yet) is unresolved: until 2026-12-07 only stored
// results were counted, so such a group showed nowhere
// (TestStatesCountWantedGroups).
func (c cloudGroups) states() map[string]int {
	st := c.Status()
	out := map[string]int{"resolved": 0, "error": 0, "unresolved": 0, "refused": st.Refused, "over-budget": 0}
	for _, u := range c.res.Refused() {
		if u.Unit != "" {
			out["over-budget"]++
		}
	}
	stored := map[string]bool{}
	for _, g := range st.Groups {
		stored[g.Key] = true
		switch {
		case g.Error != "":
			out["error"]++
		case g.Resolved:
			out["resolved"]++
		default:
			out["unresolved"]++
		}
	}
	for _, key := range c.Wanted() {
		if !stored[key] {
			out["unresolved"]++
		}
	}
	return out
}

// followNodeSelectors gives every toNodes/fromNodes selector of the
// policies the addresses of the cluster's nodes whose labels it matches,
// whenever nodes or policies change (checked every second); taken gives
// the record of a node the router took (this node's own is).
func followNodeSelectors(ctx context.Context, list func() []node.Node, taken func(n node.Node) (node.Node, bool), res *policy.Resolver, engine *enforcement.Engine) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		nodes := takenRecords(list(), taken)
		for key, sel := range res.NodeSelectorsInUse() {
			engine.GroupChanged(key, nodeSelectorAddrs(nodes, sel))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// takenRecords are the records the router took of nodes (not the
// registry's newest, which it may have refused), read once for every
// selector.
func takenRecords(nodes []node.Node, taken func(n node.Node) (node.Node, bool)) []node.Node {
	var out []node.Node
	for _, n := range nodes {
		if n, ok := taken(n); ok {
			out = append(out, n)
		}
	}
	return out
}

// nodeSelectorAddrs are the addresses sel selects: the address of each
// of the taken records (takenRecords) whose labels sel matches. Only that
// address was vetted as the node's own (a record's other addresses were
// not: until 2026-12-04 a node publishing another node's pods' addresses
// among its own had a tenant's toNodes selector give those pods CIDR
// identities on every node, and refused records counted too).
func nodeSelectorAddrs(nodes []node.Node, sel api.EndpointSelector) []netip.Addr {
	var addrs []netip.Addr
	for _, n := range nodes {
		if !n.IP().IsValid() {
			continue
		}
		var ls labels.Labels
		for k, v := range n.Labels {
			ls = append(ls, labels.Label{Source: "node", Key: k, Value: v})
		}
		if sel.Matches(ls) {
			addrs = append(addrs, n.IP())
		}
	}
	return addrs
}

// takenNode is the record of n the router took; this node's own record
// is its own.
func (a *Agent) takenNode(n node.Node) (node.Node, bool) {
	if n.Name == a.cfg.NodeName {
		return n, true
	}
	return a.router.Taken(n.Name)
}
