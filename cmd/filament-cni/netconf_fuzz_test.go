package main

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/filament-net/filament/agent/endpoint"
	"github.com/filament-net/filament/agent/labels"
)

// FuzzNetConf feeds an arbitrary network configuration (the plugin's stdin)
// and CNI_ARGS to the plugin's parsing, as a container runtime would. It
// must never panic; every refusal is a CNI error with a spec code (decoding
// failure, invalid network config or invalid environment variables); and
// the endpoint request sent to the agent carries only labels a workload may
// set (never reserved:, cidr: or an agent-owned key), each of which reads
// back from its string form as itself.
func FuzzNetConf(f *testing.F) {
	f.Fuzz(func(t *testing.T, stdin []byte, cniArgs string) {
		conf, err := loadConf(stdin)
		if err != nil {
			requireCode(t, "loadConf", err, types.ErrDecodingFailure, types.ErrInvalidNetworkConfig)
			return
		}
		if conf.Type != "filament" || conf.Name == "" || (conf.AgentSocket != "" && !filepath.IsAbs(conf.AgentSocket)) {
			t.Fatalf("loadConf accepted type %q, name %q, agentSocket %q", conf.Type, conf.Name, conf.AgentSocket)
		}
		req, err := conf.endpointRequest(&skel.CmdArgs{ContainerID: "c1", Netns: "/proc/1/ns/net", IfName: "eth0", Args: cniArgs, StdinData: stdin})
		if err != nil {
			requireCode(t, "endpointRequest", err, types.ErrInvalidNetworkConfig, types.ErrInvalidEnvironmentVariables)
			return
		}
		if req.Network != conf.Name {
			t.Fatalf("request network %q, want %q", req.Network, conf.Name)
		}
		for _, s := range req.Labels {
			l, err := labels.Parse(s)
			if err != nil {
				t.Fatalf("label %q sent to the agent does not parse: %v", s, err)
			}
			if l.String() != s {
				t.Fatalf("label %q sent to the agent reads back as %q", s, l.String())
			}
			if err := endpoint.CheckWorkloadLabel(l); err != nil {
				t.Fatalf("label %q that a workload may not set reached the request: %v", s, err)
			}
		}
	})
}

func requireCode(t *testing.T, what string, err error, codes ...uint) {
	t.Helper()
	var ce *types.Error
	if !errors.As(err, &ce) {
		t.Fatalf("%s: %v is not a CNI error", what, err)
	}
	for _, c := range codes {
		if ce.Code == c {
			return
		}
	}
	t.Fatalf("%s: code %d (%v), want one of %v", what, ce.Code, err, codes)
}
