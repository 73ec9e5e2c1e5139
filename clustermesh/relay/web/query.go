package web

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/filament-net/filament/agent/hubble/pb/observer"
	hquery "github.com/filament-net/filament/agent/hubble/query"
)

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

// commaLists are the parameters whose values may be comma-separated
// lists (the page's own; a label selector or a path pattern has commas).
var commaLists = []string{"namespace", "pod", "verdict", "protocol"}

// podParams are the parameters naming pods.
var podParams = []string{"pod", "from-pod", "to-pod"}

// parseQuery reads a query of `hubble observe`'s options by their names
// (agent/hubble/query.FromURL: pod, namespace, label, ip, port, verdict,
// protocol, type, http-*, node-name, their from- and to- forms, since,
// until, last, first, follow, all), with the page's bounds and two
// differences: namespace, pod, verdict and protocol take comma-separated
// lists, and a pod without a namespace ("cart") is of any namespace when
// no namespace is asked for, not of "default". The flows asked for are
// def without last or first, and at most max (all: max).
func parseQuery(v url.Values, def, max int) (query, error) {
	v2 := url.Values{}
	for k, vals := range v {
		if len(vals) > maxQueryValues {
			return query{}, fmt.Errorf("%w: %d values of %q", ErrQuery, len(vals), k)
		}
		for _, s := range vals {
			if len(s) > maxQueryValue {
				return query{}, fmt.Errorf("%w: a value of %q longer than %d bytes", ErrQuery, k, maxQueryValue)
			}
			if !slices.Contains(commaLists, k) {
				v2.Add(k, s)
				continue
			}
			for _, p := range strings.Split(s, ",") {
				if p = strings.TrimSpace(p); p != "" {
					v2.Add(k, p)
				}
			}
		}
		if len(v2[k]) > maxQueryValues {
			return query{}, fmt.Errorf("%w: %d values of %q", ErrQuery, len(v2[k]), k)
		}
	}
	if !v2.Has("namespace") && !v2.Has("from-namespace") && !v2.Has("to-namespace") {
		for _, k := range podParams {
			for i, p := range v2[k] {
				if !strings.Contains(p, "/") {
					v2[k][i] = "/" + p
				}
			}
		}
	}
	o, err := hquery.FromURL(v2)
	if err != nil {
		return query{}, fmt.Errorf("%w: %w", ErrQuery, err)
	}
	if (v.Has("last") && o.Last == 0) || (v.Has("first") && o.First == 0) {
		return query{}, fmt.Errorf("%w: last and first take a positive number", ErrQuery)
	}
	switch {
	case o.All:
		o.All, o.Last = false, uint64(max)
	case o.Last == 0 && o.First == 0:
		o.Last = uint64(def)
	}
	o.Last, o.First = min(o.Last, uint64(max)), min(o.First, uint64(max))
	req, err := hquery.Request(o)
	if err != nil {
		return query{}, fmt.Errorf("%w: %w", ErrQuery, err)
	}
	return query{req: req, follow: o.Follow}, nil
}
