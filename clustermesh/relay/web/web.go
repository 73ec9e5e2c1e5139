// Package web is the Hubble relay's web page: a service map of the whole
// mesh (workloads grouped by cluster and namespace, edges coloured by
// verdict with L7 summaries), a live flow table with filters, and the
// mesh's status. The page is static HTML, JavaScript and CSS embedded in
// the binary; its data come from a small JSON API over Hubble's Observer
// API (/api/flows, /api/map, /api/status). Everything a flow holds comes
// from workloads and is hostile: the page only ever sets it as text, and
// every response carries a strict Content-Security-Policy.
package web

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/filament-net/filament/agent/hubble/pb/observer"
)

// Config configures the page's handler.
type Config struct {
	// Observer is Hubble's Observer API: the relay's own, or one node's.
	Observer observer.ObserverClient
	// Status returns the mesh's status as a JSON-able value (clusters,
	// nodes, sync, encryption peers); nil: the page shows none.
	Status func(ctx context.Context) (any, error)
}

//go:embed static
var static embed.FS

// The API's bounds.
const (
	defaultFlows   = 100
	maxFlows       = 2000 // flows of one /api/flows answer
	defaultMap     = 2000
	maxMapFlows    = 10000 // flows one map is made of
	maxQuery       = 4096  // bytes of a request's query string
	maxFollows     = 16    // /api/flows?follow=1 streams at a time
	maxCalls       = 32    // other API requests at a time
	followLifetime = 10 * time.Minute
	callTimeout    = 20 * time.Second // a request without follow
	writeTimeout   = 10 * time.Second // one write of a follow
)

// securityHeaders: scripts, styles and data from this origin only (no
// inline script or style, no eval), no framing, no sniffing.
var securityHeaders = map[string]string{
	"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
		"base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
	"X-Content-Type-Options":       "nosniff",
	"X-Frame-Options":              "DENY",
	"Referrer-Policy":              "no-referrer",
	"Cross-Origin-Opener-Policy":   "same-origin",
	"Cross-Origin-Resource-Policy": "same-origin",
}

// Handler serves the page at / and its API under /api/.
func Handler(c Config) http.Handler { return newHandler(c) }

type handler struct {
	c       Config
	mux     *http.ServeMux
	follows chan struct{} // a slot per follow
	calls   chan struct{} // a slot per other API request
}

func newHandler(c Config) *handler {
	h := &handler{c: c, mux: http.NewServeMux(), follows: make(chan struct{}, maxFollows),
		calls: make(chan struct{}, maxCalls)}
	files, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	for _, f := range []string{"/{$}", "/app.js", "/style.css"} {
		h.mux.Handle("GET "+f, http.FileServerFS(files))
	}
	h.mux.HandleFunc("GET /api/flows", h.flows)
	h.mux.HandleFunc("GET /api/map", h.bounded(h.serviceMap))
	h.mux.HandleFunc("GET /api/status", h.bounded(h.status))
	return h
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	for k, v := range securityHeaders {
		w.Header().Set(k, v)
	}
	if len(r.URL.RawQuery) > maxQuery {
		http.Error(w, "query string too long", http.StatusRequestURITooLong)
		return
	}
	h.mux.ServeHTTP(w, r)
}

// bounded refuses a request when maxCalls are being answered.
func (h *handler) bounded(f http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		select {
		case h.calls <- struct{}{}:
			defer func() { <-h.calls }()
			f(w, r)
		default:
			http.Error(w, "too many requests at a time", http.StatusServiceUnavailable)
		}
	}
}

// flows answers GetFlows as JSON lines (a GetFlowsResponse each, in
// protojson), or with follow=1 as Server-Sent Events until the client
// goes or followLifetime ends (an EventSource reconnects).
func (h *handler) flows(w http.ResponseWriter, r *http.Request) {
	q, err := parseQuery(r.URL.Query(), defaultFlows, maxFlows)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	if !q.follow {
		h.bounded(func(w http.ResponseWriter, r *http.Request) { h.lastFlows(w, r, q) })(w, r)
		return
	}
	h.follow(w, r, q)
}

// lastFlows answers the flows held (q without follow).
func (h *handler) lastFlows(w http.ResponseWriter, r *http.Request, q query) {
	ctx, cancel := context.WithTimeout(r.Context(), callTimeout)
	defer cancel()
	w.Header().Set("Content-Type", "application/x-ndjson")
	err := h.stream(ctx, q, int(q.req.Number), func(_ *observer.GetFlowsResponse, b []byte) error {
		_, err := w.Write(append(b, '\n'))
		return err
	})
	if err != nil {
		h.fail(w, err)
	}
}

// follow streams the flows of q as they come.
func (h *handler) follow(w http.ResponseWriter, r *http.Request, q query) {
	select {
	case h.follows <- struct{}{}:
		defer func() { <-h.follows }()
	default:
		http.Error(w, "too many live flow streams", http.StatusServiceUnavailable)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), followLifetime)
	defer cancel()
	q.req.Follow = true
	// An EventSource reconnecting (after followLifetime, or a broken
	// connection) says the last event it had: go on after it, not from the
	// last flows again (no rows twice).
	if last, err := time.Parse(time.RFC3339Nano, r.Header.Get("Last-Event-ID")); err == nil {
		q.req.Number, q.req.First, q.req.Since = 0, false, timestamppb.New(last.Add(time.Nanosecond))
	}
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return
	}
	err := h.stream(ctx, q, 0, func(resp *observer.GetFlowsResponse, b []byte) error {
		_ = rc.SetWriteDeadline(time.Now().Add(writeTimeout)) // not every writer has deadlines
		id := ""
		if t := resp.GetFlow().GetTime(); t != nil {
			id = "id: " + t.AsTime().Format(time.RFC3339Nano) + "\n"
		}
		if _, err := fmt.Fprintf(w, "%sdata: %s\n\n", id, b); err != nil {
			return err
		}
		return rc.Flush()
	})
	if err != nil && ctx.Err() == nil {
		b, _ := json.Marshal(err.Error())
		fmt.Fprintf(w, "event: failure\ndata: %s\n\n", b)
	}
}

// errAnswered: the stream failed after its first bytes were sent.
var errAnswered = errors.New("answered")

// stream sends the responses of q's GetFlows, each in protojson, at most
// max flows (0: no bound; a relay merging nodes may send more than the
// Number asked for).
func (h *handler) stream(ctx context.Context, q query, max int, send func(*observer.GetFlowsResponse, []byte) error) error {
	st, err := h.c.Observer.GetFlows(ctx, q.req)
	if err != nil {
		return err
	}
	for n, sent := 0, 0; max == 0 || n < max; sent++ {
		resp, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			if sent > 0 {
				return fmt.Errorf("%w: %w", errAnswered, err)
			}
			return err
		}
		if resp.GetFlow() != nil {
			n++
		}
		b, err := protojson.Marshal(resp)
		if err != nil {
			return err
		}
		if err := send(resp, b); err != nil {
			return fmt.Errorf("%w: %w", errAnswered, err)
		}
	}
	return nil
}

// fail answers a failed call, unless part of the answer is already sent.
func (h *handler) fail(w http.ResponseWriter, err error) {
	if errors.Is(err, errAnswered) {
		return
	}
	code := http.StatusBadGateway
	if status.Code(err) == codes.InvalidArgument {
		code = http.StatusBadRequest // a filter the observer refused
	}
	http.Error(w, "observer: "+status.Convert(err).Message(), code)
}

// serviceMap answers the map of the last flows (the same query as
// /api/flows: last, since, filters; no follow).
func (h *handler) serviceMap(w http.ResponseWriter, r *http.Request) {
	q, err := parseQuery(r.URL.Query(), defaultMap, maxMapFlows)
	if err == nil && q.follow {
		err = fmt.Errorf("%w: the map has no follow", ErrQuery)
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), callTimeout)
	defer cancel()
	b := newMapBuilder()
	st, err := h.c.Observer.GetFlows(ctx, q.req)
	for n := 0; err == nil && n < maxMapFlows; n++ {
		var resp *observer.GetFlowsResponse
		if resp, err = st.Recv(); err == nil && resp.GetFlow() != nil {
			b.Add(resp.GetFlow())
		}
	}
	if err != nil && !errors.Is(err, io.EOF) {
		h.fail(w, err)
		return
	}
	writeJSON(w, b.Map())
}

// status answers Config.Status's value, 404 when there is none.
func (h *handler) status(w http.ResponseWriter, r *http.Request) {
	if h.c.Status == nil {
		http.Error(w, "no status", http.StatusNotFound)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), callTimeout)
	defer cancel()
	v, err := h.c.Status(ctx)
	if err != nil {
		http.Error(w, "status: "+err.Error(), http.StatusBadGateway)
		return
	}
	writeJSON(w, v)
}

func writeJSON(w http.ResponseWriter, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(b)
}
