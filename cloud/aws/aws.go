// Package aws owns reading AWS metadata for policy: EC2 instances and
// network interfaces selected by security group or tag (a toGroups or
// fromGroups "aws" entry), resolved to their addresses, and this node's EC2
// metadata read through IMDSv2.
//
// A [Resolver] talks to the EC2 API with credentials and region from the
// standard AWS chain (environment, shared config and credentials files, the
// instance's IAM role through IMDSv2). [ReadNodeMetadata] reads the node's
// region, zone, instance type, VPC and instance ID from the instance
// metadata service. Both report [ErrNotConfigured] when the agent is not
// set up for AWS (no region anywhere, or not running on EC2), so that
// callers can tell "AWS is not in use here" from a failing API.
package aws

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/filament-net/filament/agent/fqdn"
)

// ErrNotConfigured is wrapped by the errors that mean AWS is not set up for
// this agent: no region can be found (New), or the instance metadata
// service cannot be reached, i.e. the node is not on EC2 (ReadNodeMetadata).
var ErrNotConfigured = errors.New("AWS is not configured")

// ErrEmptyGroup is returned by Resolve for a Group that names no labels and
// no security groups: EC2 would match every running instance in the region,
// which is never what a policy means.
var ErrEmptyGroup = errors.New("aws group has no labels, security group IDs or names")

// Group selects EC2 addresses like Cilium's toGroups aws entry: Labels are
// tags (AND-ed), SecurityGroupIDs and SecurityGroupNames each OR-ed within;
// different kinds are AND-ed (EC2 filter semantics). Region empty = the
// resolver's default region.
type Group struct {
	Labels             map[string]string `json:"labels,omitempty"`
	SecurityGroupIDs   []string          `json:"securityGroupsIds,omitempty"`
	SecurityGroupNames []string          `json:"securityGroupsNames,omitempty"`
	Region             string            `json:"region,omitempty"`
}

// empty reports whether g selects nothing in particular.
func (g Group) empty() bool {
	return len(g.Labels) == 0 && len(g.SecurityGroupIDs) == 0 && len(g.SecurityGroupNames) == 0
}

// Config configures a Resolver.
type Config struct {
	Region   string // default region ("" = from the standard chain: AWS_REGION, shared config)
	Endpoint string // endpoint override (tests: moto), e.g. http://127.0.0.1:5000
	// NodeVPC gives this node's VPC (the instance metadata's), asked
	// until it answers; nil: none. Groups resolve only in it and VPCIDs.
	NodeVPC func(ctx context.Context) (string, error)
	// VPCIDs are the VPCs groups resolve in beside the node's own
	// (--aws-vpc-ids).
	VPCIDs []string
}

// defaultPageSize is the MaxResults asked of EC2 per page: the largest the
// Describe calls used here accept, to keep the number of calls down.
const defaultPageSize = 1000

// imdsRegionTimeout bounds the fallback look-up of the region from the
// instance metadata service in New.
const imdsRegionTimeout = 2 * time.Second

// Resolver resolves Groups to addresses through the EC2 API. It is safe for
// concurrent use; it keeps one EC2 client per region.
type Resolver struct {
	base     awssdk.Config
	region   string
	endpoint string
	pageSize int32 // MaxResults per Describe page (tests lower it)

	mu         sync.Mutex
	clients    map[string]*ec2.Client
	nodeVPCOf  func(ctx context.Context) (string, error)
	vpcIDs     []string
	nodeVPC    string    // cached once nodeVPCOf answered
	nodeVPCAt  time.Time // when nodeVPCOf last failed
	nodeVPCErr error
	// vpcsSeen: per region, the VPCs found there and when (vpcsIn).
	vpcsSeen map[string]vpcsFound
	// droppedLogged: the special addresses already logged (dropped).
	droppedLogged fqdn.FirstSeen
}

// New loads credentials and region from the standard chain (environment,
// shared config/credentials files, IMDSv2 role) via config.LoadDefaultConfig;
// with Endpoint set, every EC2 client uses BaseEndpoint. When no region can
// be found, returns an error wrapping ErrNotConfigured saying what to set.
//
// The region is cfg.Region, else the chain's (AWS_REGION, AWS_DEFAULT_REGION,
// the shared config file's profile), else this instance's region from IMDSv2
// (asked with a short timeout, and not at all when AWS_EC2_METADATA_DISABLED
// is true). Credentials are not fetched here but on the first call.
func New(ctx context.Context, cfg Config) (*Resolver, error) {
	if cfg.Endpoint != "" {
		u, err := url.Parse(cfg.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("aws: endpoint %q is not an http(s) URL", cfg.Endpoint)
		}
	}
	var opts []func(*config.LoadOptions) error
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("aws: loading configuration: %w", err)
	}
	if awsCfg.Region == "" {
		region, ierr := regionFromIMDS(ctx, awsCfg)
		if region == "" {
			why := "the instance metadata service gave none"
			if ierr != nil {
				why = fmt.Sprintf("the instance metadata service was not usable: %v", ierr)
			}
			return nil, fmt.Errorf("%w: no AWS region found: set the agent's AWS region, "+
				"AWS_REGION (or AWS_DEFAULT_REGION), or region in the shared config file "+
				"(~/.aws/config or AWS_CONFIG_FILE, profile from AWS_PROFILE); %s", ErrNotConfigured, why)
		}
		awsCfg.Region = region
	}
	return &Resolver{
		base:     awsCfg,
		region:   awsCfg.Region,
		endpoint: cfg.Endpoint,
		pageSize: defaultPageSize,
		clients:  make(map[string]*ec2.Client),

		nodeVPCOf: cfg.NodeVPC,
		vpcIDs:    slices.Clone(cfg.VPCIDs),
	}, nil
}

// regionFromIMDS asks IMDSv2 for this instance's region, quickly.
func regionFromIMDS(ctx context.Context, cfg awssdk.Config) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, imdsRegionTimeout)
	defer cancel()
	c := imds.NewFromConfig(cfg, func(o *imds.Options) {
		o.EnableFallback = awssdk.FalseTernary
	})
	out, err := c.GetRegion(ctx, nil)
	if err != nil {
		return "", err
	}
	return out.Region, nil
}

// Region is the resolver's default region, used for Groups without one.
func (r *Resolver) Region() string { return r.region }

// client returns the EC2 client for region, creating it on first use.
func (r *Resolver) client(region string) *ec2.Client {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c, ok := r.clients[region]; ok {
		return c
	}
	c := ec2.NewFromConfig(r.base, func(o *ec2.Options) {
		o.Region = region
		if r.endpoint != "" {
			o.BaseEndpoint = awssdk.String(r.endpoint)
		}
	})
	r.clients[region] = c
	return c
}

// Resolve returns the sorted, de-duplicated addresses of g: every private
// IPv4 of every network interface (primary and secondary) of RUNNING
// instances matching (filters instance-state-name=running, tag:<k>=<v> per
// label, instance.group-id, instance.group-name), plus their associated
// public IPs / Elastic IPs; and network interfaces with no instance attached
// (e.g. load balancers) matching the groups (filters group-id, group-name,
// and tag:<k>) with their private and associated public IPs. Full
// pagination on both calls (use the SDK paginators). Errors wrap the SDK
// error with context (which call, which region).
//
// For the network interfaces, security group names are first turned into
// IDs with DescribeSecurityGroups (filter group-name) and matched by ID
// (filter group-id, plus a check of each interface's groups when IDs and
// names are both given): it selects the same interfaces as the group-name
// filter, which some EC2 implementations (moto) lack. A group with no
// labels and no security groups returns ErrEmptyGroup.
func (r *Resolver) Resolve(ctx context.Context, g Group) ([]netip.Addr, error) {
	if g.empty() {
		return nil, ErrEmptyGroup
	}
	region := g.Region
	if region == "" {
		region = r.region
	}
	vpcs, err := r.vpcs(ctx)
	if err != nil {
		return nil, err
	}
	c := r.client(region)
	if vpcs, err = r.vpcsIn(ctx, c, region, vpcs); err != nil {
		return nil, err
	}
	set := make(map[netip.Addr]struct{})
	if err := r.instanceAddrs(ctx, c, region, g, vpcs, set); err != nil {
		return nil, err
	}
	if err := r.interfaceAddrs(ctx, c, region, g, vpcs, set); err != nil {
		return nil, err
	}
	for a := range set {
		if !fqdn.Learnable(a) {
			delete(set, a)
			r.dropped(a, region, g)
		}
	}
	out := slices.SortedFunc(maps.Keys(set), netip.Addr.Compare)
	return out, nil
}

// dropped logs, once per address, an address an EC2 answer gave that no
// policy may name: the ones toFQDNs refuses from DNS answers
// (fqdn.Learnable: this network, loopback, link-local with the instance
// metadata service, multicast, broadcast, the cloud platform endpoints).
// Until 2026-12-07 an interface holding 169.254.169.254 had a toGroups
// rule let pods reach the metadata service and the node role's
// credentials (TestResolveDropsSpecialAddresses).
func (r *Resolver) dropped(a netip.Addr, region string, g Group) {
	if r.droppedLogged.First(a) {
		slog.Warn("an EC2 answer gave a special-purpose address: dropped from the group (no policy may allow it)",
			"addr", a, "region", region, "labels", g.Labels, "securityGroupIds", g.SecurityGroupIDs, "securityGroupNames", g.SecurityGroupNames)
	}
}

// nodeVPCRetry is how long a failed look-up of the node's VPC is kept
// before it is asked again.
const nodeVPCRetry = 30 * time.Second

// vpcs are the VPCs groups resolve in: the node's (Config.NodeVPC, asked
// until it answers) and Config.VPCIDs. None known is an error: a group
// resolved in every VPC of the account (or of any account that shares
// one) selects any interface anyone can tag, with any private address
// (TestResolveOnlyInTheVPCs).
func (r *Resolver) vpcs(ctx context.Context) (map[string]bool, error) {
	r.mu.Lock()
	ask := r.nodeVPC == "" && r.nodeVPCOf != nil && (r.nodeVPCAt.IsZero() || time.Since(r.nodeVPCAt) >= nodeVPCRetry)
	r.mu.Unlock()
	if ask {
		vpc, err := r.nodeVPCOf(ctx)
		if err == nil && vpc == "" {
			err = errors.New("no VPC in the instance metadata")
		}
		r.mu.Lock()
		if err == nil {
			r.nodeVPC, r.nodeVPCErr = vpc, nil
		} else {
			r.nodeVPCAt, r.nodeVPCErr = time.Now(), err
		}
		r.mu.Unlock()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]bool, len(r.vpcIDs)+1)
	for _, v := range r.vpcIDs {
		out[v] = true
	}
	if r.nodeVPC != "" {
		out[r.nodeVPC] = true
	}
	if len(out) == 0 {
		why := "no look-up of it configured"
		if r.nodeVPCErr != nil {
			why = r.nodeVPCErr.Error()
		}
		return nil, fmt.Errorf("aws: no VPC to resolve groups in: this node's VPC is unknown (%s) and the agent's AWS VPC IDs (--aws-vpc-ids) name none", why)
	}
	return out, nil
}

// vpcsFound is what vpcsIn found of a set of VPCs in one region.
type vpcsFound struct {
	asked string // the VPCs asked, sorted, joined
	found map[string]bool
	at    time.Time
}

// vpcCheckTTL is how long vpcsIn's answer for a region is kept.
const vpcCheckTTL = 5 * time.Minute

// vpcsIn returns those of vpcs that exist in region; none is an error. A
// VPC belongs to one region: a group of another region (its policy's
// `region`) filtered by the node's VPC, or by a mistyped --aws-vpc-ids,
// matched nothing, and that empty answer replaced the group's last good
// set, so a deny group denied nothing (found 2026-12-07 by a review;
// TestResolveMoto's other region, TestResolveOnlyInTheVPCs).
func (r *Resolver) vpcsIn(ctx context.Context, c *ec2.Client, region string, vpcs map[string]bool) (map[string]bool, error) {
	ids := slices.Sorted(maps.Keys(vpcs))
	asked := strings.Join(ids, ",")
	r.mu.Lock()
	seen, ok := r.vpcsSeen[region]
	r.mu.Unlock()
	if !ok || seen.asked != asked || time.Since(seen.at) >= vpcCheckTTL {
		out, err := c.DescribeVpcs(ctx, &ec2.DescribeVpcsInput{Filters: []ec2types.Filter{filter("vpc-id", ids...)}})
		if err != nil {
			return nil, fmt.Errorf("aws: VPCs in %s: %w", region, err)
		}
		seen = vpcsFound{asked: asked, found: map[string]bool{}, at: time.Now()}
		for _, v := range out.Vpcs {
			if v.VpcId != nil && vpcs[*v.VpcId] {
				seen.found[*v.VpcId] = true
			}
		}
		r.mu.Lock()
		if r.vpcsSeen == nil {
			r.vpcsSeen = map[string]vpcsFound{}
		}
		r.vpcsSeen[region] = seen
		r.mu.Unlock()
	}
	if len(seen.found) == 0 {
		return nil, fmt.Errorf("aws: none of the VPCs groups resolve in (%s) is in region %s: a group of that region needs its VPC in --aws-vpc-ids", asked, region)
	}
	return seen.found, nil
}

// instanceAddrs adds the addresses of the running instances g selects
// in the VPCs vpcs.
func (r *Resolver) instanceAddrs(ctx context.Context, c *ec2.Client, region string, g Group, vpcs map[string]bool, set map[netip.Addr]struct{}) error {
	filters := []ec2types.Filter{filter("instance-state-name", string(ec2types.InstanceStateNameRunning)),
		filter("vpc-id", slices.Sorted(maps.Keys(vpcs))...)}
	filters = append(filters, tagFilters(g.Labels)...)
	if len(g.SecurityGroupIDs) > 0 {
		filters = append(filters, filter("instance.group-id", g.SecurityGroupIDs...))
	}
	if len(g.SecurityGroupNames) > 0 {
		filters = append(filters, filter("instance.group-name", g.SecurityGroupNames...))
	}
	p := ec2.NewDescribeInstancesPaginator(c, &ec2.DescribeInstancesInput{Filters: filters},
		func(o *ec2.DescribeInstancesPaginatorOptions) {
			o.Limit = r.pageSize
			o.StopOnDuplicateToken = true
		})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("aws: ec2 DescribeInstances in region %q: %w", region, err)
		}
		for _, res := range page.Reservations {
			for _, inst := range res.Instances {
				// The filter already asks for running instances; this
				// guards against an implementation that ignores it.
				if inst.State != nil && inst.State.Name != ec2types.InstanceStateNameRunning {
					continue
				}
				if !vpcs[awssdk.ToString(inst.VpcId)] {
					continue // likewise for the VPC filter
				}
				addInstance(set, inst)
			}
		}
	}
	return nil
}

// addInstance adds an instance's private IPv4 addresses (primary and
// secondary, on every interface) and the public or Elastic IPs associated
// with them.
func addInstance(set map[netip.Addr]struct{}, inst ec2types.Instance) {
	addIP(set, inst.PrivateIpAddress)
	addIP(set, inst.PublicIpAddress)
	for _, ni := range inst.NetworkInterfaces {
		addIP(set, ni.PrivateIpAddress)
		if ni.Association != nil {
			addIP(set, ni.Association.PublicIp)
		}
		for _, pip := range ni.PrivateIpAddresses {
			addIP(set, pip.PrivateIpAddress)
			if pip.Association != nil {
				addIP(set, pip.Association.PublicIp)
			}
		}
	}
}

// interfaceAddrs adds the addresses of the network interfaces in the VPCs
// vpcs that no instance is attached to but that are in use (load
// balancers, NAT gateways, endpoints) and that g selects. Interfaces in
// no use (status available: created and never attached, or detached)
// are left out: until 2026-12-07 they counted, so anyone able to create
// one with a chosen address and a tenant's tag added that address to
// the tenant's group (TestResolveOnlyInTheVPCs).
func (r *Resolver) interfaceAddrs(ctx context.Context, c *ec2.Client, region string, g Group, vpcs map[string]bool, set map[netip.Addr]struct{}) error {
	filters := append(tagFilters(g.Labels), filter("vpc-id", slices.Sorted(maps.Keys(vpcs))...))
	var nameIDs map[string]bool // IDs of the groups named in g, if any
	if len(g.SecurityGroupNames) > 0 {
		ids, err := r.groupIDsByName(ctx, c, region, g.SecurityGroupNames)
		if err != nil {
			return err
		}
		if len(ids) == 0 {
			return nil // no such group: no interface can be in one
		}
		nameIDs = make(map[string]bool, len(ids))
		for _, id := range ids {
			nameIDs[id] = true
		}
		if len(g.SecurityGroupIDs) == 0 {
			filters = append(filters, filter("group-id", ids...))
		}
	}
	if len(g.SecurityGroupIDs) > 0 {
		filters = append(filters, filter("group-id", g.SecurityGroupIDs...))
	}
	p := ec2.NewDescribeNetworkInterfacesPaginator(c, &ec2.DescribeNetworkInterfacesInput{Filters: filters},
		func(o *ec2.DescribeNetworkInterfacesPaginatorOptions) {
			o.Limit = r.pageSize
			o.StopOnDuplicateToken = true
		})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("aws: ec2 DescribeNetworkInterfaces in region %q: %w", region, err)
		}
		for _, ni := range page.NetworkInterfaces {
			if ni.Attachment != nil && awssdk.ToString(ni.Attachment.InstanceId) != "" {
				continue // an instance's: counted (if running) with the instance
			}
			if ni.Status != ec2types.NetworkInterfaceStatusInUse || !vpcs[awssdk.ToString(ni.VpcId)] {
				continue // in no use, or outside the VPCs (the filter ignored)
			}
			if nameIDs != nil && !slices.ContainsFunc(ni.Groups, func(gi ec2types.GroupIdentifier) bool {
				return nameIDs[awssdk.ToString(gi.GroupId)]
			}) {
				continue
			}
			addIP(set, ni.PrivateIpAddress)
			if ni.Association != nil {
				addIP(set, ni.Association.PublicIp)
			}
			for _, pip := range ni.PrivateIpAddresses {
				addIP(set, pip.PrivateIpAddress)
				if pip.Association != nil {
					addIP(set, pip.Association.PublicIp)
				}
			}
		}
	}
	return nil
}

// groupIDsByName returns the IDs of the security groups with the given
// names (names are unique per VPC, so one name may give several IDs).
func (r *Resolver) groupIDsByName(ctx context.Context, c *ec2.Client, region string, names []string) ([]string, error) {
	p := ec2.NewDescribeSecurityGroupsPaginator(c, &ec2.DescribeSecurityGroupsInput{
		Filters: []ec2types.Filter{filter("group-name", names...)},
	}, func(o *ec2.DescribeSecurityGroupsPaginatorOptions) {
		o.Limit = r.pageSize
		o.StopOnDuplicateToken = true
	})
	var ids []string
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("aws: ec2 DescribeSecurityGroups in region %q: %w", region, err)
		}
		for _, sg := range page.SecurityGroups {
			if id := awssdk.ToString(sg.GroupId); id != "" {
				ids = append(ids, id)
			}
		}
	}
	return ids, nil
}

// addIP adds the IP in s to set, if s holds one.
func addIP(set map[netip.Addr]struct{}, s *string) {
	if s == nil || *s == "" {
		return
	}
	a, err := netip.ParseAddr(*s)
	if err != nil {
		return
	}
	set[a.Unmap()] = struct{}{}
}

// filter builds an EC2 filter. EC2 treats '*' and '?' in filter values as
// wildcards; they are escaped so that values match literally.
func filter(name string, values ...string) ec2types.Filter {
	vs := make([]string, len(values))
	for i, v := range values {
		vs[i] = filterValueEscaper.Replace(v)
	}
	return ec2types.Filter{Name: awssdk.String(name), Values: vs}
}

var filterValueEscaper = strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`)

// tagFilters is one tag:<key>=<value> filter per label (AND-ed), in key
// order.
func tagFilters(labels map[string]string) []ec2types.Filter {
	var fs []ec2types.Filter
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		fs = append(fs, filter("tag:"+k, labels[k]))
	}
	return fs
}
