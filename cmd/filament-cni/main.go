// Command filament-cni is the CNI plugin (spec 1.0.0 and 1.1.0) that asks
// the node's filament-agent for an endpoint. Network config:
//
//	{"cniVersion": "1.1.0", "name": "filament", "type": "filament",
//	 "agentSocket": "/var/run/filament/agent.sock"}
//
// Endpoint labels come from "args": {"cni": {"labels": [{"key", "value"}]}}
// (the CNI conventions) and K8S_POD_NAMESPACE / K8S_POD_NAME in CNI_ARGS.
// Labels a workload may not set (reserved:, cidr:, the namespace and
// cluster keys, io.cilium.k8s.*) fail with code 7 naming the label.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/filament-net/filament/agent/api/client"
	apitypes "github.com/filament-net/filament/agent/api/types"
	"github.com/filament-net/filament/agent/endpoint"
	"github.com/filament-net/filament/agent/endpoint/veth"
	"github.com/filament-net/filament/agent/labels"
	fversion "github.com/filament-net/filament/internal/version"
)

// Error codes of this plugin beyond the spec's (the spec reserves 0-99).
const (
	errEndpointExists uint = 100 // the container interface already has an endpoint
	errPoolExhausted  uint = 101 // the node's pod CIDR has no free address
	errCheckFailed    uint = 102 // CHECK: devices, address or routes not as created
)

// NetConf is the plugin's network configuration.
type NetConf struct {
	types.PluginConf
	AgentSocket string `json:"agentSocket,omitempty"`
	Args        *struct {
		CNI *struct {
			Labels []struct {
				Key   string `json:"key"`
				Value string `json:"value"`
			} `json:"labels,omitempty"`
		} `json:"cni,omitempty"`
	} `json:"args,omitempty"`
}

// k8sArgs are the Kubernetes keys of CNI_ARGS.
type k8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // CNI_ARGS key
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive
	K8S_POD_UID                types.UnmarshallableString //nolint:revive
}

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck, GC: cmdGC, Status: cmdStatus},
		version.PluginSupports("1.0.0", "1.1.0"), "filament-cni "+fversion.Version)
}

func loadConf(stdin []byte) (*NetConf, error) {
	var c NetConf
	if err := json.Unmarshal(stdin, &c); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "network config is not valid JSON", err.Error())
	}
	if c.Type != "filament" {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("network config field type: %q, want \"filament\"", c.Type), "")
	}
	if c.Name == "" {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "network config field name: must not be empty", "")
	}
	if c.AgentSocket != "" && !filepath.IsAbs(c.AgentSocket) {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("network config field agentSocket: %q must be an absolute path", c.AgentSocket), "")
	}
	if c.RawPrevResult != nil {
		if err := version.ParsePrevResult(&c.PluginConf); err != nil {
			return nil, types.NewError(types.ErrDecodingFailure, "network config field prevResult: "+err.Error(), "")
		}
	}
	return &c, nil
}

func (c *NetConf) client() *client.Client {
	if c.AgentSocket != "" {
		return client.New(c.AgentSocket)
	}
	return client.New(client.SocketPath(""))
}

func ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 60*time.Second)
}

// cniError maps an agent error onto a CNI error code.
func cniError(what string, err error) error {
	var code uint = types.ErrUnknown
	switch {
	case errors.Is(err, client.ErrAgentDown), client.IsCode(err, apitypes.CodeUnavailable):
		// No agent on the socket, or its kvstore unreachable: both pass.
		code = types.ErrTryAgainLater
	case errors.Is(err, context.DeadlineExceeded):
		code = types.ErrTryAgainLater
		err = fmt.Errorf("the agent did not answer in time (%w); try again later", err)
	case client.IsCode(err, apitypes.CodeInvalid):
		code = types.ErrInvalidNetworkConfig
	case client.IsCode(err, apitypes.CodeExists):
		code = errEndpointExists
	case client.IsCode(err, apitypes.CodeExhausted):
		code = errPoolExhausted
	case client.IsCode(err, apitypes.CodeNotFound):
		code = types.ErrUnknownContainer
	}
	return types.NewError(code, what+": "+err.Error(), "")
}

func (c *NetConf) endpointRequest(args *skel.CmdArgs) (apitypes.EndpointRequest, error) {
	req := apitypes.EndpointRequest{ContainerID: args.ContainerID, IfName: args.IfName, NetNS: args.Netns, Network: c.Name}
	var ka k8sArgs
	if args.Args != "" {
		if err := types.LoadArgs(args.Args, &ka); err != nil {
			return req, types.NewError(types.ErrInvalidEnvironmentVariables, "CNI_ARGS: "+err.Error(), "")
		}
	}
	req.Namespace, req.PodName = string(ka.K8S_POD_NAMESPACE), string(ka.K8S_POD_NAME)
	if c.Args != nil && c.Args.CNI != nil {
		for i, l := range c.Args.CNI.Labels {
			lbl, err := labels.Parse(l.Key)
			if err == nil {
				lbl.Value = l.Value
				err = lbl.Validate()
			}
			if err == nil {
				// The agent refuses these too; this names the field.
				err = endpoint.CheckWorkloadLabel(lbl)
			}
			if err != nil {
				return req, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("network config field args.cni.labels[%d]: %v", i, err), "")
			}
			req.Labels = append(req.Labels, lbl.String())
		}
	}
	return req, nil
}

func result(cniVersion string, ep apitypes.Endpoint) *types100.Result {
	podIdx := 1
	return &types100.Result{
		CNIVersion: cniVersion,
		Interfaces: []*types100.Interface{
			{Name: ep.HostIfName, Mac: ep.HostMAC},
			{Name: ep.IfName, Mac: ep.MAC, Sandbox: ep.NetNS, Mtu: ep.MTU},
		},
		IPs: []*types100.IPConfig{{
			Interface: &podIdx,
			Address:   net.IPNet{IP: ep.IPv4.AsSlice(), Mask: net.CIDRMask(ep.PrefixLen, 32)},
			Gateway:   ep.Gateway.AsSlice(),
		}},
		Routes: []*types.Route{{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: ep.Gateway.AsSlice()}},
	}
}

func cmdAdd(args *skel.CmdArgs) error {
	c, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	if _, err := os.Stat(args.Netns); err != nil {
		return types.NewError(types.ErrUnknownContainer, fmt.Sprintf("CNI_NETNS %q: %v", args.Netns, err), "")
	}
	req, err := c.endpointRequest(args)
	if err != nil {
		return err
	}
	x, cancel := ctx()
	defer cancel()
	ep, err := c.client().CreateEndpoint(x, req)
	if err != nil {
		return cniError("create endpoint", err)
	}
	return types.PrintResult(result(c.CNIVersion, ep), c.CNIVersion)
}

func cmdDel(args *skel.CmdArgs) error {
	c, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	x, cancel := ctx()
	defer cancel()
	if err := c.client().DeleteContainer(x, args.ContainerID, args.IfName); err != nil {
		return cniError("delete endpoint", err)
	}
	return nil
}

func cmdCheck(args *skel.CmdArgs) error {
	c, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	if c.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "network config field prevResult: required for CHECK", "")
	}
	prev, err := types100.NewResultFromResult(c.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "network config field prevResult: "+err.Error(), "")
	}
	x, cancel := ctx()
	defer cancel()
	ep, err := c.client().LookupEndpoint(x, args.ContainerID, args.IfName)
	if err != nil {
		return cniError("check endpoint", err)
	}
	found := false
	for _, ip := range prev.IPs {
		if ip.Address.IP.Equal(ep.IPv4.AsSlice()) {
			found = true
		}
	}
	if !found {
		return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("prevResult does not hold the endpoint's address %s", ep.IPv4), "")
	}
	if ep.State != apitypes.EndpointReady {
		return types.NewError(types.ErrUnknownContainer, fmt.Sprintf("endpoint %d is %s", ep.ID, ep.State), "")
	}
	// veth.Check reads only the interfaces, address and gateway.
	want := endpoint.Endpoint{ID: ep.ID, IfName: ep.IfName, HostIfName: ep.HostIfName, IPv4: ep.IPv4, Gateway: ep.Gateway}
	if err := veth.Check(args.Netns, want); errors.Is(err, veth.ErrMismatch) {
		return types.NewError(errCheckFailed, fmt.Sprintf("endpoint %d: %v", ep.ID, strings.ReplaceAll(err.Error(), "\n", "; ")), "")
	} else if err != nil {
		return types.NewError(types.ErrUnknownContainer, err.Error(), "")
	}
	return nil
}

// cmdGC deletes every endpoint of this network (its name) that is not in
// cni.dev/valid-attachments; other networks' endpoints are not its to collect.
func cmdGC(args *skel.CmdArgs) error {
	c, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	valid := map[string]bool{}
	for _, a := range c.ValidAttachments {
		valid[a.ContainerID+"/"+a.IfName] = true
	}
	x, cancel := ctx()
	defer cancel()
	cl := c.client()
	eps, err := cl.Endpoints(x)
	if err != nil {
		return cniError("list endpoints", err)
	}
	for _, ep := range eps {
		if ep.Network != c.Name || valid[ep.ContainerID+"/"+ep.IfName] {
			continue
		}
		// By container and interface, not by the ID listed: IDs are
		// reused at once, and a DEL and an ADD of other containers may
		// have run since the list.
		if err := cl.DeleteContainer(x, ep.ContainerID, ep.IfName); err != nil && !client.IsCode(err, apitypes.CodeNotFound) {
			return cniError(fmt.Sprintf("garbage-collect endpoint %d (container %s, interface %s)", ep.ID, ep.ContainerID, ep.IfName), err)
		}
	}
	return nil
}

// cmdStatus reports whether ADD can be served: the agent must answer.
func cmdStatus(args *skel.CmdArgs) error {
	c, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	x, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.client().Status(x); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "filament-agent is not available: "+err.Error(), "")
	}
	return nil
}
