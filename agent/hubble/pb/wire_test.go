// Package pb_test checks that the generated Hubble API keeps Hubble's wire
// identity: proto package, message and service names and method names are
// what the real hubble CLI sends and expects.
package pb_test

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/filament-net/filament/agent/hubble/pb/flow"
	"github.com/filament-net/filament/agent/hubble/pb/observer"
	"github.com/filament-net/filament/agent/hubble/pb/peer"
	"github.com/filament-net/filament/agent/hubble/pb/relay"
)

func TestFullNames(t *testing.T) {
	for _, c := range []struct {
		got  protoreflect.FullName
		want protoreflect.FullName
	}{
		{(&flow.Flow{}).ProtoReflect().Descriptor().FullName(), "flow.Flow"},
		{(&observer.GetFlowsRequest{}).ProtoReflect().Descriptor().FullName(), "observer.GetFlowsRequest"},
		{(&observer.GetFlowsResponse{}).ProtoReflect().Descriptor().FullName(), "observer.GetFlowsResponse"},
		{(&peer.ChangeNotification{}).ProtoReflect().Descriptor().FullName(), "peer.ChangeNotification"},
		{(&relay.NodeStatusEvent{}).ProtoReflect().Descriptor().FullName(), "relay.NodeStatusEvent"},
	} {
		if c.got != c.want {
			t.Errorf("full name %q, want %q", c.got, c.want)
		}
	}
	// The registered file paths are Hubble's too (server reflection).
	for _, c := range []struct {
		fd   protoreflect.FileDescriptor
		path string
	}{
		{flow.File_flow_flow_proto, "flow/flow.proto"},
		{observer.File_observer_observer_proto, "observer/observer.proto"},
		{peer.File_peer_peer_proto, "peer/peer.proto"},
		{relay.File_relay_relay_proto, "relay/relay.proto"},
	} {
		if c.fd.Path() != c.path {
			t.Errorf("file path %q, want %q", c.fd.Path(), c.path)
		}
	}
}

func TestServices(t *testing.T) {
	for _, c := range []struct {
		fd      protoreflect.FileDescriptor
		service protoreflect.Name
		full    protoreflect.FullName
		methods []protoreflect.Name
	}{
		{observer.File_observer_observer_proto, "Observer", "observer.Observer",
			[]protoreflect.Name{"GetFlows", "GetAgentEvents", "GetDebugEvents", "GetNodes", "GetNamespaces", "ServerStatus"}},
		{peer.File_peer_peer_proto, "Peer", "peer.Peer", []protoreflect.Name{"Notify"}},
	} {
		s := c.fd.Services().ByName(c.service)
		if s == nil {
			t.Errorf("service %s missing", c.full)
			continue
		}
		if s.FullName() != c.full {
			t.Errorf("service %q, want %q", s.FullName(), c.full)
		}
		for _, m := range c.methods {
			if s.Methods().ByName(m) == nil {
				t.Errorf("method %s.%s missing", c.full, m)
			}
		}
	}
	// The names the generated gRPC stubs put on the wire.
	if observer.Observer_GetFlows_FullMethodName != "/observer.Observer/GetFlows" {
		t.Errorf("GetFlows method name %q", observer.Observer_GetFlows_FullMethodName)
	}
	if peer.Peer_Notify_FullMethodName != "/peer.Peer/Notify" {
		t.Errorf("Notify method name %q", peer.Peer_Notify_FullMethodName)
	}
	if !observer.File_observer_observer_proto.Services().ByName("Observer").Methods().ByName("GetFlows").IsStreamingServer() {
		t.Error("GetFlows is not server-streaming")
	}
}

func TestFlowRoundTrip(t *testing.T) {
	in := &observer.GetFlowsResponse{
		NodeName: "cluster-a/node-1",
		ResponseTypes: &observer.GetFlowsResponse_Flow{Flow: &flow.Flow{
			Time:     timestamppb.Now(),
			Verdict:  flow.Verdict_DROPPED,
			IP:       &flow.IP{Source: "10.0.1.2", Destination: "fd00::3", IpVersion: flow.IPVersion_IPv6},
			NodeName: "cluster-a/node-1",
			Source:   &flow.Endpoint{Identity: 1234, Namespace: "default", PodName: "client", Labels: []string{"k8s:app=client"}},
			L7: &flow.Layer7{
				Type:      flow.L7FlowType_RESPONSE,
				LatencyNs: 1500,
				Record: &flow.Layer7_Http{Http: &flow.HTTP{
					Code: 403, Method: "GET", Url: "http://web/admin", Protocol: "HTTP/1.1",
				}},
			},
		}},
	}
	b, err := proto.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out observer.GetFlowsResponse
	if err := proto.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(in, &out) {
		t.Fatalf("round trip changed the message:\n in %v\nout %v", in, &out)
	}
	f := out.GetFlow()
	if f.GetVerdict() != flow.Verdict_DROPPED || f.GetIP().GetDestination() != "fd00::3" ||
		f.GetL7().GetHttp().GetCode() != 403 || f.GetL7().GetHttp().GetMethod() != "GET" {
		t.Fatalf("fields lost: %v", f)
	}
	// A flow alone, as Flow (the type observer re-exports by import public).
	var g flow.Flow
	fb, err := proto.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	if err := proto.Unmarshal(fb, &g); err != nil || !proto.Equal(f, &g) {
		t.Fatalf("flow round trip: %v", err)
	}
	// Verdict numbers are Hubble's wire values.
	if flow.Verdict_FORWARDED != 1 || flow.Verdict_DROPPED != 2 {
		t.Fatal("verdict numbers changed")
	}
}
