package query

import (
	"errors"
	"math"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/filament-net/filament/agent/hubble/filter"
	"github.com/filament-net/filament/agent/hubble/pb/flow"
	"github.com/filament-net/filament/agent/hubble/pb/observer"
)

var testNow = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

func init() { now = func() time.Time { return testNow } }

func TestRequest(t *testing.T) {
	drop := []flow.Verdict{flow.Verdict_DROPPED}
	for _, tc := range []struct {
		name string
		o    Options
		want *observer.GetFlowsRequest
	}{
		{"nothing: the last 20", Options{}, &observer.GetFlowsRequest{Number: 20}},
		{"--pod: source OR destination", Options{Pod: []string{"default/web"}}, &observer.GetFlowsRequest{Number: 20, Whitelist: []*flow.FlowFilter{
			{SourcePod: []string{"default/web"}}, {DestinationPod: []string{"default/web"}}}}},
		{"one option's values OR", Options{FromPod: []string{"a", "b/c"}}, &observer.GetFlowsRequest{Number: 20, Whitelist: []*flow.FlowFilter{
			{SourcePod: []string{"a", "b/c"}}}}},
		{"--verdict (any case) AND --from-pod", Options{Verdict: []string{"dropped"}, FromPod: []string{"default/intruder"}}, &observer.GetFlowsRequest{Number: 20, Whitelist: []*flow.FlowFilter{
			{SourcePod: []string{"default/intruder"}, Verdict: drop}}}},
		{"--pod with --namespace", Options{Pod: []string{"web", "other/db"}, Namespace: []string{"other"}}, &observer.GetFlowsRequest{Number: 20, Whitelist: []*flow.FlowFilter{
			{SourcePod: []string{"other/web", "other/db"}}, {DestinationPod: []string{"other/web", "other/db"}}}}},
		{"--namespace alone: its pods either way", Options{Namespace: []string{"a", "b"}}, &observer.GetFlowsRequest{Number: 20, Whitelist: []*flow.FlowFilter{
			{SourcePod: []string{"a/", "b/"}}, {DestinationPod: []string{"a/", "b/"}}}}},
		{"--from-namespace with --to-pod", Options{FromNamespace: []string{"a"}, ToPod: []string{"web"}}, &observer.GetFlowsRequest{Number: 20, Whitelist: []*flow.FlowFilter{
			{SourcePod: []string{"a/"}, DestinationPod: []string{"web"}}}}},
		{"--to-namespace names the destination pods", Options{ToNamespace: []string{"a"}, ToPod: []string{"web"}}, &observer.GetFlowsRequest{Number: 20, Whitelist: []*flow.FlowFilter{
			{DestinationPod: []string{"a/web"}}}}},
		{"--label with --verdict", Options{Label: []string{"app=web"}, Verdict: []string{"DROPPED"}}, &observer.GetFlowsRequest{Number: 20, Whitelist: []*flow.FlowFilter{
			{SourceLabel: []string{"app=web"}, Verdict: drop}, {DestinationLabel: []string{"app=web"}, Verdict: drop}}}},
		{"--port, --protocol", Options{Port: []string{"080"}, Protocol: []string{"TCP"}}, &observer.GetFlowsRequest{Number: 20, Whitelist: []*flow.FlowFilter{
			{SourcePort: []string{"80"}, Protocol: []string{"tcp"}}, {DestinationPort: []string{"80"}, Protocol: []string{"tcp"}}}}},
		{"--from-label --to-port --from-ip --to-fqdn", Options{FromLabel: []string{"k8s:app=client"}, ToPort: []string{"53"}, FromIP: []string{"10.0.0.0/8"}, ToFQDN: []string{"*.test"}},
			&observer.GetFlowsRequest{Number: 20, Whitelist: []*flow.FlowFilter{{SourceLabel: []string{"k8s:app=client"}, DestinationPort: []string{"53"}, SourceIp: []string{"10.0.0.0/8"}, DestinationFqdn: []string{"*.test"}}}}},
		{"--ip, --identity by name and number", Options{IP: []string{"fd00::1"}, Identity: []string{"world", "reserved:host", "4097"}}, &observer.GetFlowsRequest{Number: 20, Whitelist: []*flow.FlowFilter{
			{SourceIp: []string{"fd00::1"}, SourceIdentity: []uint32{2, 1, 4097}}, {DestinationIp: []string{"fd00::1"}, DestinationIdentity: []uint32{2, 1, 4097}}}}},
		{"--type, HTTP, node", Options{Type: []string{"drop", "l7", "4:3"}, HTTPMethod: []string{"POST"}, HTTPPath: []string{"^/api/"}, HTTPStatus: []string{"4+", "200"}, NodeName: []string{"c1/n*"}},
			&observer.GetFlowsRequest{Number: 20, Whitelist: []*flow.FlowFilter{{
				EventType:  []*flow.EventTypeFilter{{Type: 1}, {Type: 129}, {Type: 4, MatchSubType: true, SubType: 3}},
				HttpMethod: []string{"POST"}, HttpPath: []string{"^/api/"}, HttpStatusCode: []string{"4+", "200"}, NodeName: []string{"c1/n*"}}}}},
		{"--tcp-flags: a value's names AND (any case, spaces), values OR", Options{TCPFlags: []string{"SYN,ACK", "fin", "rst, Psh", "URG,ECE,CWR,NS"}},
			&observer.GetFlowsRequest{Number: 20, Whitelist: []*flow.FlowFilter{{TcpFlags: []*flow.TCPFlags{
				{SYN: true, ACK: true}, {FIN: true}, {RST: true, PSH: true}, {URG: true, ECE: true, CWR: true, NS: true}}}}}},
		{"--last", Options{Last: 5}, &observer.GetFlowsRequest{Number: 5}},
		{"--first", Options{First: 3}, &observer.GetFlowsRequest{Number: 3, First: true}},
		{"--all", Options{All: true}, &observer.GetFlowsRequest{Number: math.MaxUint64}},
		{"--follow: no backlog bound", Options{Follow: true}, &observer.GetFlowsRequest{Follow: true}},
		{"--follow --last", Options{Follow: true, Last: 10}, &observer.GetFlowsRequest{Follow: true, Number: 10}},
		{"--since a duration ago, --until RFC 3339", Options{Since: "5m", Until: "2026-12-01T09:59:00Z"}, &observer.GetFlowsRequest{
			Since: timestamppb.New(testNow.Add(-5 * time.Minute)), Until: timestamppb.New(testNow.Add(-time.Minute))}},
		{"--since a date; --until ignored with --follow", Options{Since: "2026-11-30", Until: "1m", Follow: true}, &observer.GetFlowsRequest{
			Follow: true, Since: timestamppb.New(time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC))}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Request(tc.o)
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(got, tc.want) {
				t.Fatalf("got  %v\nwant %v", protojson.Format(got), protojson.Format(tc.want))
			}
			if err := validate(got.Whitelist, got.Blacklist); err != nil {
				t.Fatalf("the server refuses it: %v", err)
			}
		})
	}
}

func TestRequestErrors(t *testing.T) {
	many := make([]string, maxValues+1)
	for i := range many {
		many[i] = strconv.Itoa(i)
	}
	for _, tc := range []struct {
		o    Options
		want string // in the error
	}{
		{Options{Verdict: []string{"DROPPED", "LOST"}}, `--verdict "LOST": want FORWARDED`},
		{Options{Port: []string{"70000"}}, `--port "70000": want a port number`},
		{Options{ToPort: []string{"-1"}}, `--to-port "-1"`},
		{Options{Since: "yesterday"}, `--since "yesterday": want RFC 3339`},
		{Options{Until: "2026-13-01"}, `--until "2026-13-01"`},
		{Options{FromIP: []string{"10.0.0.300"}}, `--from-ip "10.0.0.300": not an IP address`},
		{Options{IP: []string{"10.0.0.0/33"}}, `--ip "10.0.0.0/33"`},
		{Options{Label: []string{"app=("}}, `--label "app=(": not a label selector`},
		{Options{Protocol: []string{"sctp"}}, `--protocol "sctp": want one of`},
		{Options{Type: []string{"nonsense"}}, `--type "nonsense"`},
		{Options{Type: []string{"trace:x"}}, `--type "trace:x": want a sub-type`},
		{Options{Identity: []string{"nobody"}}, `--identity "nobody": want a number or one of`},
		{Options{HTTPStatus: []string{"4xx"}}, `--http-status "4xx"`},
		{Options{TCPFlags: []string{"SYN,BOGUS"}}, `--tcp-flags "SYN,BOGUS": want TCP flag names`},
		{Options{TCPFlags: []string{""}}, `--tcp-flags "": want TCP flag names`},
		{Options{TCPFlags: []string{"SYN,"}}, `--tcp-flags "SYN,": want TCP flag names`},
		{Options{HTTPPath: []string{"("}}, `--http-path "("`},
		{Options{ToFQDN: []string{""}}, `--to-fqdn "": want a DNS name`},
		{Options{Pod: []string{"/"}}, `--pod "/"`},
		{Options{Namespace: []string{""}}, `--namespace "": want a namespace`},
		{Options{ToNamespace: []string{"a/b"}}, `--to-namespace "a/b": want a namespace`},
		{Options{Label: []string{"a=b"}, FromLabel: []string{"c=d"}}, "--label and --from-label cannot be combined"},
		{Options{Namespace: []string{"a"}, FromPod: []string{"x"}}, "--from-pod and --namespace cannot be combined"},
		{Options{Pod: []string{"x"}, IP: []string{"10.0.0.1"}}, "--ip and --pod cannot be combined"},
		{Options{Port: []string{"1"}, ToPort: []string{"2"}}, "--port and --to-port cannot be combined"},
		{Options{ToIP: []string{"10.0.0.1"}, ToFQDN: []string{"a.test"}}, "--to-fqdn and --to-ip cannot be combined"},
		{Options{Namespace: []string{"a"}, Pod: []string{"b/x"}}, `--namespace "a" does not contain pod "b/x"`},
		{Options{First: 1, Last: 1}, "--first and --last"},
		{Options{First: 1, Follow: true}, "--first and --follow"},
		{Options{First: 1, All: true}, "--first and --all"},
		{Options{Last: 1, All: true}, "--last and --all"},
		{Options{FromPort: many}, "--from-port: 257 values"},
		{Options{FromPod: many[:200], FromNamespace: []string{"a", "b"}}, "--from-namespace: 200 pods in 2 namespaces"},
	} {
		_, err := Request(tc.o)
		if !errors.Is(err, ErrOption) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want ErrOption with %q", tc.o, err, tc.want)
		}
	}
}

// A URL query builds the same request as the same options given as flags.
func TestFromURL(t *testing.T) {
	q, _ := url.ParseQuery("pod=default/web&pod=db&verdict=dropped&since=5m&follow&last=7&type=l7&namespace=default")
	got, err := FromURL(q)
	if err != nil {
		t.Fatal(err)
	}
	want := Options{Pod: []string{"default/web", "db"}, Verdict: []string{"dropped"}, Since: "5m", Follow: true, Last: 7, Type: []string{"l7"}, Namespace: []string{"default"}}
	r1, err1 := Request(got)
	r2, err2 := Request(want)
	if err1 != nil || err2 != nil || !proto.Equal(r1, r2) {
		t.Fatalf("from the URL %v (%v), from options %v (%v)", r1, err1, r2, err2)
	}
	if o, err := FromURL(url.Values{"all": {"false"}, "first": {"3"}, "until": {"1h"}}); err != nil || o.All || o.First != 3 || o.Until != "1h" {
		t.Errorf("all=false first=3 until=1h: %+v %v", o, err)
	}
	for q, want := range map[string]string{
		"verdict=LOST":      `--verdict "LOST"`, // by Request
		"pod=a&color=blue":  `unknown option "color"`,
		"last=many":         `--last "many": want a number`,
		"follow=maybe":      `--follow "maybe"`,
		"since=1m&since=2m": "since: 2 values",
	} {
		v, _ := url.ParseQuery(q)
		o, err := FromURL(v)
		if err == nil {
			_, err = Request(o)
		}
		if !errors.Is(err, ErrOption) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want ErrOption with %q", q, err, want)
		}
	}
}

// FuzzFromURL: any query string either builds a request the server takes
// or is refused with ErrOption; nothing panics.
func FuzzFromURL(f *testing.F) {
	for _, s := range []string{
		"pod=default/web&verdict=DROPPED",
		"namespace=a&pod=x&pod=b/y",
		"from-label=k8s:app%3Dclient&protocol=http&http-status=4%2B",
		"to-fqdn=*.test&to-port=53&type=l7:0",
		"ip=10.0.0.0/8&identity=world&node-name=c/n*",
		"since=2026-12-01T10:00:00Z&until=5m&last=10&follow=1",
		"http-path=^/a(&first=2&all",
		"from-namespace=a&to-namespace=b&to-pod=c/d",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		q, err := url.ParseQuery(s)
		if err != nil {
			return
		}
		o, err := FromURL(q)
		if err != nil {
			if !errors.Is(err, ErrOption) {
				t.Fatalf("refused without ErrOption: %v", err)
			}
			return
		}
		req, err := Request(o)
		if err != nil {
			if !errors.Is(err, ErrOption) {
				t.Fatalf("refused without ErrOption: %v", err)
			}
			return
		}
		if err := validate(req.Whitelist, req.Blacklist); err != nil {
			t.Fatalf("%q: the server refuses the request: %v", s, err)
		}
		if _, err := proto.Marshal(req); err != nil {
			t.Fatalf("%q: the request does not marshal: %v", s, err)
		}
		if req.First && req.Follow || req.Since.IsValid() != (req.Since != nil) || req.Until.IsValid() != (req.Until != nil) {
			t.Fatalf("%q: an inconsistent request %v", s, req)
		}
	})
}

// validate is nil when the node's server takes the filters.
func validate(allow, deny []*flow.FlowFilter) error {
	_, err := filter.Compile(allow, deny)
	return err
}
