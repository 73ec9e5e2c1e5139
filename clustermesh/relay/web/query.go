package web

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	flowpb "github.com/filament-net/filament/agent/hubble/pb/flow"
	"github.com/filament-net/filament/agent/hubble/pb/observer"
)

// TODO(issue 17): replace this parser with agent/hubble/query.FromURL once
// that package is merged; it reads the same names, and more.

// ErrQuery is returned for a query string the page's API refuses.
var ErrQuery = errors.New("bad query")

// Bounds of a query: its values, their sizes.
const (
	maxQueryValues = 16  // of one parameter
	maxQueryValue  = 256 // bytes of one value
)

// query is what a request of the page's API asks for.
type query struct {
	req    *observer.GetFlowsRequest
	follow bool
}

// parseQuery reads the filters the page uses: namespace, pod (either side
// of a flow), verdict, protocol (comma-separated or repeated: any of them),
// last (the number of flows, at most max; def when absent), since (RFC 3339
// or a duration before now) and follow.
func parseQuery(v url.Values, def, max int, now time.Time) (query, error) {
	for k, vals := range v {
		if len(vals) > maxQueryValues {
			return query{}, fmt.Errorf("%w: %d values of %q", ErrQuery, len(vals), k)
		}
		for _, s := range vals {
			if len(s) > maxQueryValue {
				return query{}, fmt.Errorf("%w: a value of %q longer than %d bytes", ErrQuery, k, maxQueryValue)
			}
		}
		switch k {
		case "namespace", "pod", "verdict", "protocol", "last", "since", "follow":
		default:
			return query{}, fmt.Errorf("%w: unknown parameter %q", ErrQuery, k)
		}
	}
	list := func(k string) (out []string) {
		for _, s := range v[k] {
			for _, p := range strings.Split(s, ",") {
				if p = strings.TrimSpace(p); p != "" {
					out = append(out, p)
				}
			}
		}
		if len(out) > maxQueryValues {
			out = out[:maxQueryValues]
		}
		return out
	}
	q := query{req: &observer.GetFlowsRequest{Number: uint64(def)}}
	if s := v.Get("last"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return query{}, fmt.Errorf("%w: last=%q is not a positive number", ErrQuery, s)
		}
		q.req.Number = uint64(min(n, max))
	}
	if s := v.Get("since"); s != "" {
		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			d, derr := time.ParseDuration(s)
			if derr != nil || d < 0 {
				return query{}, fmt.Errorf("%w: since=%q is neither RFC 3339 nor a duration", ErrQuery, s)
			}
			t = now.Add(-d)
		}
		q.req.Since = timestamppb.New(t)
	}
	switch s := v.Get("follow"); s {
	case "", "0", "false":
	case "1", "true":
		q.follow = true
	default:
		return query{}, fmt.Errorf("%w: follow=%q", ErrQuery, s)
	}
	var verdicts []flowpb.Verdict
	for _, s := range list("verdict") {
		n, ok := flowpb.Verdict_value[strings.ToUpper(s)]
		if !ok || n == 0 {
			return query{}, fmt.Errorf("%w: verdict=%q", ErrQuery, s)
		}
		verdicts = append(verdicts, flowpb.Verdict(n))
	}
	protocols := list("protocol")
	// Pods: "ns/prefix" as given; a bare prefix in the namespace asked
	// for, else in any namespace ("/prefix", not Hubble's default one).
	ns := list("namespace")
	var pods []string
	for _, p := range list("pod") {
		switch {
		case strings.Contains(p, "/"):
			pods = append(pods, p)
		case len(ns) == 0:
			pods = append(pods, "/"+p)
		default:
			for _, n := range ns {
				pods = append(pods, n+"/"+p)
			}
		}
	}
	if len(pods) == 0 {
		for _, n := range ns {
			pods = append(pods, n+"/")
		}
	}
	// Either side: one filter per side, each with the other fields (a
	// flow passes any filter of the list, all fields of one).
	src := &flowpb.FlowFilter{SourcePod: pods, Verdict: verdicts, Protocol: protocols}
	dst := &flowpb.FlowFilter{DestinationPod: pods, Verdict: verdicts, Protocol: protocols}
	switch {
	case len(pods) > 0:
		q.req.Whitelist = []*flowpb.FlowFilter{src, dst}
	case len(verdicts) > 0 || len(protocols) > 0:
		q.req.Whitelist = []*flowpb.FlowFilter{src}
	}
	return q, nil
}
