// Package api owns the agent's HTTP/JSON API server on a unix socket: it
// maps requests onto the agent's components and converts their domain
// values to the API's contract, the wire types of agent/api/types. Clients
// use agent/api/client, which links none of this.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/filament-net/filament/agent/api/types"
	"github.com/filament-net/filament/agent/endpoint"
	"github.com/filament-net/filament/agent/groups"
	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipam"
	"github.com/filament-net/filament/agent/labels"
	"github.com/filament-net/filament/agent/monitor"
	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/agent/policy"
	policyapi "github.com/filament-net/filament/agent/policy/api"
	"github.com/filament-net/filament/agent/policysync"
	"github.com/filament-net/filament/agent/service"
	"github.com/filament-net/filament/clustermesh/remote"
)

// Endpoints is what the API needs of the endpoint manager.
type Endpoints interface {
	Create(ctx context.Context, r endpoint.CreateRequest) (endpoint.Endpoint, error)
	Delete(ctx context.Context, id uint16) error
	DeleteByContainer(ctx context.Context, containerID, ifName string) (bool, error)
	Get(id uint16) (endpoint.Endpoint, error)
	Lookup(containerID, ifName string) (endpoint.Endpoint, error)
	List() []endpoint.Endpoint
}

// Identities is what the API needs of the identity allocator.
type Identities interface {
	Get(n identity.NumericIdentity) (identity.Identity, error)
	List() []identity.Identity
}

// Policies is what the API needs of the policy repository.
type Policies interface {
	Import(ps []policyapi.Policy) (uint64, error)
	Delete(key string) (uint64, error)
	Get(key string) (policyapi.Policy, error)
	List() []policyapi.Policy
}

// ScopedPolicies is a policy store whose changes are tied to the request
// (nothing is applied once its context ends) and have a scope: "" (the
// cluster's) or "local" (this node's). The cluster's store implements it;
// a plain repository (tests, no kvstore) does not.
type ScopedPolicies interface {
	ImportContext(ctx context.Context, ps []policyapi.Policy, scope string) (uint64, error)
	DeleteContext(ctx context.Context, key, scope string) (uint64, error)
	Scope(key string) (string, error)
}

// Server serves the API.
type Server struct {
	Endpoints  Endpoints
	Identities Identities
	Policies   Policies
	Status     func(ctx context.Context) types.Status
	// Monitor streams datapath events (nil: no datapath).
	Monitor *monitor.Hub
	// KnownIdentities, when set, are all the identities this node knows,
	// remote clusters' included (GET /v1/identities?clusters=all).
	KnownIdentities func() []identity.Identity
	// Metrics serves Prometheus metrics at /metrics (nil: none).
	Metrics http.Handler
	// ClusterMesh reports the remote clusters (nil: none).
	ClusterMesh func() []remote.Status
	// Nodes lists the cluster's nodes (nil: none known).
	Nodes func() []node.Node
	// ClusterName labels trace label sets that name no cluster.
	ClusterName string
	// Trace evaluates policy between two label sets (nil: no resolver).
	Trace func(src, dst labels.Labels, proto uint8, port uint16) policy.TraceResult
	// Services manages the cluster's services (nil: none).
	Services Services
	// Groups manages toGroups/fromGroups (nil: none).
	Groups Groups
	// FQDNCache lists the node's DNS name cache (nil: none).
	FQDNCache func() []types.FQDNEntry
	// Encryption reports the node's transparent encryption (nil: none).
	Encryption func() (EncryptionStatus, error)
	// RotateKey makes and publishes a new encryption key (nil: none).
	RotateKey func(ctx context.Context) (string, error)
	// BPF reads the datapath's maps (nil: no datapath).
	BPF BPFMaps
	// IdentityLabels names an identity's labels for the BPF views (nil:
	// Identities).
	IdentityLabels func(identity.NumericIdentity) []string

	srv *http.Server
}

// Handler returns the API's routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) { reply(w, http.StatusOK, s.Status(r.Context())) })
	mux.HandleFunc("GET /v1/endpoints", s.listEndpoints)
	mux.HandleFunc("POST /v1/endpoints", s.createEndpoint)
	mux.HandleFunc("DELETE /v1/endpoints", s.deleteEndpointByContainer)
	mux.HandleFunc("GET /v1/endpoints/{id}", s.getEndpoint)
	s.bpfRoutes(mux)
	mux.HandleFunc("DELETE /v1/endpoints/{id}", s.deleteEndpoint)
	mux.HandleFunc("GET /v1/identities", s.listIdentities)
	mux.HandleFunc("GET /v1/identities/{id}", s.getIdentity)
	mux.HandleFunc("GET /v1/policies", s.listPolicies)
	mux.HandleFunc("PUT /v1/policies", s.importPolicies)
	mux.HandleFunc("GET /v1/policies/{key...}", s.getPolicy)
	mux.HandleFunc("DELETE /v1/policies/{key...}", s.deletePolicy)
	mux.HandleFunc("POST /v1/policy-trace", s.trace)
	mux.HandleFunc("GET /v1/monitor", s.monitor)
	mux.HandleFunc("GET /v1/clustermesh", func(w http.ResponseWriter, r *http.Request) {
		st := []types.ClusterStatus{}
		if s.ClusterMesh != nil {
			st = each(s.ClusterMesh(), wireCluster)
		}
		reply(w, http.StatusOK, st)
	})
	mux.HandleFunc("GET /v1/nodes", func(w http.ResponseWriter, r *http.Request) {
		nodes := []types.Node{}
		if s.Nodes != nil {
			nodes = each(s.Nodes(), wireNode)
		}
		reply(w, http.StatusOK, nodes)
	})
	mux.HandleFunc("GET /v1/encryption", func(w http.ResponseWriter, r *http.Request) {
		st := types.EncryptionStatus{Mode: "none", Peers: []types.PeerStatus{}}
		if s.Encryption != nil {
			es, err := s.Encryption()
			if err != nil {
				fail(w, err)
				return
			}
			st = wireEncryption(es)
		}
		reply(w, http.StatusOK, st)
	})
	mux.HandleFunc("POST /v1/encryption/rotate-key", func(w http.ResponseWriter, r *http.Request) {
		if s.RotateKey == nil {
			fail(w, fmt.Errorf("%w: this agent does not encrypt", errBadRequest))
			return
		}
		pub, err := s.RotateKey(r.Context())
		if err != nil {
			fail(w, err)
			return
		}
		reply(w, http.StatusOK, map[string]string{"publicKey": pub})
	})
	mux.HandleFunc("GET /v1/groups", func(w http.ResponseWriter, r *http.Request) {
		st := types.GroupsStatus{Groups: []types.GroupResult{}}
		if s.Groups != nil {
			st = wireGroups(s.Groups.Status())
		}
		reply(w, http.StatusOK, st)
	})
	mux.HandleFunc("GET /v1/fqdn/cache", func(w http.ResponseWriter, r *http.Request) {
		out := []types.FQDNEntry{}
		if s.FQDNCache != nil {
			out = s.FQDNCache()
		}
		reply(w, http.StatusOK, out)
	})
	mux.HandleFunc("POST /v1/groups/refresh", func(w http.ResponseWriter, r *http.Request) {
		if s.Groups == nil {
			fail(w, fmt.Errorf("%w: this agent resolves no groups", errBadRequest))
			return
		}
		if err := s.Groups.Refresh(r.Context()); err != nil {
			fail(w, err)
			return
		}
		reply(w, http.StatusOK, map[string]string{"refresh": "requested"})
	})
	mux.HandleFunc("GET /v1/services", s.listServices)
	mux.HandleFunc("PUT /v1/services", s.upsertService)
	mux.HandleFunc("POST /v1/services/validate", s.validateService)
	mux.HandleFunc("GET /v1/services/{ns}/{name}", s.getService)
	mux.HandleFunc("DELETE /v1/services/{ns}/{name}", s.deleteService)
	if s.Metrics != nil {
		mux.Handle("GET /metrics", s.Metrics)
	}
	return mux
}

// Serve listens on the unix socket at path (replacing a stale one, mode
// 0660) and serves until Shutdown.
func (s *Server) Serve(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("api socket dir: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("api socket: %w", err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("api socket: %w", err)
	}
	os.Chmod(path, 0o660)
	s.srv = &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := s.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Error("api server stopped", "err", err)
		}
	}()
	return nil
}

// Shutdown stops accepting requests and waits for running ones.
func (s *Server) Shutdown(ctx context.Context) error {
	if s.srv == nil {
		return nil
	}
	return s.srv.Shutdown(ctx)
}

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// fail maps an error onto its HTTP status by the sentinel it wraps.
func fail(w http.ResponseWriter, err error) {
	status, code := http.StatusInternalServerError, types.CodeInternal
	switch {
	case errors.Is(err, endpoint.ErrNotFound), errors.Is(err, identity.ErrNotFound), errors.Is(err, policy.ErrNotFound), errors.Is(err, service.ErrNotFound):
		status, code = http.StatusNotFound, types.CodeNotFound
	case errors.Is(err, endpoint.ErrExists), errors.Is(err, service.ErrConflict), errors.Is(err, policysync.ErrUnreadable):
		status, code = http.StatusConflict, types.CodeExists
	case errors.Is(err, endpoint.ErrUnavailable), errors.Is(err, policysync.ErrBusy), errors.Is(err, service.ErrBusy), errors.Is(err, ipam.ErrHeld):
		status, code = http.StatusServiceUnavailable, types.CodeUnavailable
	case errors.Is(err, ipam.ErrExhausted), errors.Is(err, identity.ErrExhausted):
		status, code = http.StatusInsufficientStorage, types.CodeExhausted
	case errors.Is(err, endpoint.ErrInvalid), errors.Is(err, labels.ErrInvalid), errors.Is(err, policyapi.ErrInvalidPolicy), errors.Is(err, policy.ErrBudget),
		errors.Is(err, service.ErrInvalid), errors.Is(err, errBadRequest):
		status, code = http.StatusBadRequest, types.CodeInvalid
	case errors.Is(err, errTooLarge), errors.Is(err, policysync.ErrTooLarge):
		status, code = http.StatusRequestEntityTooLarge, types.CodeTooLarge
	}
	reply(w, status, types.Error{Code: code, Message: err.Error()})
}

var (
	errBadRequest = errors.New("bad request")
	errTooLarge   = errors.New("request body too large")
)

// Request body limits: a body over its limit is refused whole (413), never
// cut and applied in part.
const (
	jsonBodyLimit    = 1 << 20
	policyBodyLimit  = 8 << 20
	serviceBodyLimit = 16 << 20
)

// limitBody makes reading r's body past limit bytes fail; bodyError turns
// that failure into errTooLarge.
func limitBody(w http.ResponseWriter, r *http.Request, limit int64) io.Reader {
	return http.MaxBytesReader(w, r.Body, limit)
}

// bodyError describes an error reading a request body: errTooLarge naming
// the limit when the body is over it, else errBadRequest.
func bodyError(err error) error {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return fmt.Errorf("%w: over the limit of %d MiB; nothing was applied (split the input into smaller files)", errTooLarge, mbe.Limit>>20)
	}
	return fmt.Errorf("%w: body: %v", errBadRequest, err)
}

// readBody reads r's whole body, at most limit bytes.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	b, err := io.ReadAll(limitBody(w, r, limit))
	if err != nil {
		return nil, bodyError(err)
	}
	return b, nil
}

func decodeStrict(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(limitBody(w, r, jsonBodyLimit))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return bodyError(err)
	}
	return nil
}

func endpointID(r *http.Request) (uint16, error) {
	n, err := strconv.ParseUint(r.PathValue("id"), 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%w: endpoint ID %q: want a number 1-65535", errBadRequest, r.PathValue("id"))
	}
	return uint16(n), nil
}

func (s *Server) listEndpoints(w http.ResponseWriter, r *http.Request) {
	if cid := r.URL.Query().Get("containerID"); cid != "" {
		ep, err := s.Endpoints.Lookup(cid, r.URL.Query().Get("ifName"))
		if err != nil {
			fail(w, err)
			return
		}
		reply(w, http.StatusOK, []types.Endpoint{wireEndpoint(ep)})
		return
	}
	reply(w, http.StatusOK, each(s.Endpoints.List(), wireEndpoint))
}

func (s *Server) createEndpoint(w http.ResponseWriter, r *http.Request) {
	var req types.EndpointRequest
	if err := decodeStrict(w, r, &req); err != nil {
		fail(w, err)
		return
	}
	ep, err := s.Endpoints.Create(r.Context(), endpoint.CreateRequest(req))
	if err != nil {
		fail(w, err)
		return
	}
	reply(w, http.StatusCreated, wireEndpoint(ep))
}

func (s *Server) getEndpoint(w http.ResponseWriter, r *http.Request) {
	id, err := endpointID(r)
	if err != nil {
		fail(w, err)
		return
	}
	ep, err := s.Endpoints.Get(id)
	if err != nil {
		fail(w, err)
		return
	}
	reply(w, http.StatusOK, s.endpointView(ep))
}

func (s *Server) deleteEndpoint(w http.ResponseWriter, r *http.Request) {
	id, err := endpointID(r)
	if err != nil {
		fail(w, err)
		return
	}
	if err := s.Endpoints.Delete(r.Context(), id); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// deleteEndpointByContainer is CNI DEL: idempotent, 204 whether or not it existed.
func (s *Server) deleteEndpointByContainer(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("containerID") == "" {
		fail(w, fmt.Errorf("%w: containerID query parameter is required", errBadRequest))
		return
	}
	if _, err := s.Endpoints.DeleteByContainer(r.Context(), q.Get("containerID"), q.Get("ifName")); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) listIdentities(w http.ResponseWriter, r *http.Request) {
	ids := s.Identities.List()
	switch q := r.URL.Query().Get("clusters"); q {
	case "":
	case "all":
		ids = mergeIdentities(ids, s.KnownIdentities)
	default:
		fail(w, fmt.Errorf("%w: clusters %q: want all or nothing", errBadRequest, q))
		return
	}
	out := make([]types.IdentityView, len(ids))
	for i, id := range ids {
		out[i] = wireIdentity(id)
	}
	reply(w, http.StatusOK, out)
}

func (s *Server) getIdentity(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.ParseUint(r.PathValue("id"), 10, 32)
	if err != nil {
		fail(w, fmt.Errorf("%w: identity %q: want a number", errBadRequest, r.PathValue("id")))
		return
	}
	id, err := s.Identities.Get(identity.NumericIdentity(n))
	if err != nil {
		fail(w, err)
		return
	}
	reply(w, http.StatusOK, wireIdentity(id))
}

func (s *Server) importPolicies(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(w, r, policyBodyLimit)
	if err != nil {
		fail(w, err)
		return
	}
	ps, err := policyapi.Parse(body)
	if err != nil {
		fail(w, err)
		return
	}
	if len(ps) == 0 {
		fail(w, fmt.Errorf("%w: no policy document in the input", policyapi.ErrInvalidPolicy))
		return
	}
	rev, err := s.importScoped(r, ps)
	if err != nil {
		fail(w, err)
		return
	}
	res := types.PolicyImportResult{Revision: rev}
	for _, p := range ps {
		res.Policies = append(res.Policies, p.Key())
	}
	reply(w, http.StatusOK, res)
}

// importScoped applies an import for the request's scope (?scope=local:
// this node only), or nothing once the request's context has ended.
func (s *Server) importScoped(r *http.Request, ps []policyapi.Policy) (uint64, error) {
	if sp, ok := s.Policies.(ScopedPolicies); ok {
		return sp.ImportContext(r.Context(), ps, r.URL.Query().Get("scope"))
	}
	if err := r.Context().Err(); err != nil {
		return 0, err
	}
	return s.Policies.Import(ps)
}

// deleteScoped is importScoped for a delete.
func (s *Server) deleteScoped(r *http.Request, key string) (uint64, error) {
	if sp, ok := s.Policies.(ScopedPolicies); ok {
		return sp.DeleteContext(r.Context(), key, r.URL.Query().Get("scope"))
	}
	if err := r.Context().Err(); err != nil {
		return 0, err
	}
	return s.Policies.Delete(key)
}

func (s *Server) getPolicy(w http.ResponseWriter, r *http.Request) {
	p, err := s.Policies.Get(r.PathValue("key"))
	if err != nil {
		fail(w, err)
		return
	}
	wp, err := viaJSON[types.Policy](p)
	if err != nil {
		fail(w, err)
		return
	}
	v := types.PolicyView{Policy: wp, ClusterWide: p.Clusterwide()}
	if sp, ok := s.Policies.(ScopedPolicies); ok {
		v.Scope, _ = sp.Scope(p.Key())
	}
	if s.Groups != nil {
		v.DerivedGroups = each(s.Groups.Derived(p), wireGroup)
	}
	reply(w, http.StatusOK, v)
}

func (s *Server) listPolicies(w http.ResponseWriter, _ *http.Request) {
	replyAs[[]types.Policy](w, s.Policies.List())
}

// Groups is the cloud groups manager as the API uses it.
type Groups interface {
	Status() groups.Status
	Refresh(ctx context.Context) error
	// Derived lists the groups a policy names with their resolution.
	Derived(p policyapi.Policy) []groups.Result
}

func (s *Server) deletePolicy(w http.ResponseWriter, r *http.Request) {
	rev, err := s.deleteScoped(r, r.PathValue("key"))
	if err != nil {
		fail(w, err)
		return
	}
	reply(w, http.StatusOK, types.PolicyImportResult{Revision: rev, Policies: []string{r.PathValue("key")}})
}

// monitor streams events as JSON lines until the client goes away.
func (s *Server) monitor(w http.ResponseWriter, r *http.Request) {
	if s.Monitor == nil {
		fail(w, fmt.Errorf("%w: this agent runs no datapath", errBadRequest))
		return
	}
	var f monitor.Filter
	if v := r.URL.Query().Get("endpoint"); v != "" {
		n, err := strconv.ParseUint(v, 10, 16)
		if err != nil {
			fail(w, fmt.Errorf("%w: endpoint %q: want a number", errBadRequest, v))
			return
		}
		f.Endpoint = uint16(n)
	}
	switch t := r.URL.Query().Get("type"); t {
	case "", "drop", "policy-verdict", "translated", "l7":
		f.Type = t
	default:
		fail(w, fmt.Errorf("%w: type %q: want drop, policy-verdict, translated or l7", errBadRequest, t))
		return
	}
	ch, stop := s.Monitor.Subscribe(f)
	defer stop()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	fl, _ := w.(http.Flusher)
	if fl != nil {
		fl.Flush()
	}
	enc := json.NewEncoder(w)
	for {
		select {
		case <-r.Context().Done():
			return
		case ev, ok := <-ch:
			if !ok {
				return
			}
			if err := enc.Encode(wireEvent(ev)); err != nil {
				return
			}
			if fl != nil {
				fl.Flush()
			}
		}
	}
}

var protoNumbers = map[string]uint8{"TCP": 6, "UDP": 17, "SCTP": 132, "ICMP": 1}

func (s *Server) traceSide(ep uint16, ls []string, side string) (labels.Labels, error) {
	if ep != 0 {
		e, err := s.Endpoints.Get(ep)
		if err != nil {
			return nil, err
		}
		id, err := s.Identities.Get(e.Identity)
		if err != nil {
			return nil, err
		}
		return id.Labels, nil
	}
	if len(ls) == 0 {
		return nil, fmt.Errorf("%w: %s: give an endpoint ID or labels", errBadRequest, side)
	}
	out, err := labels.ParseList(ls...)
	if err != nil {
		return nil, fmt.Errorf("%w: %sLabels: %v", errBadRequest, side, err)
	}
	// Pods live in a namespace and a cluster: without them given, the
	// default namespace of the local cluster.
	if _, ok := out.Get(labels.KeyNamespace); !ok {
		if out, err = out.With(labels.Label{Source: labels.SourceK8s, Key: labels.KeyNamespace, Value: "default"}); err != nil {
			return nil, err
		}
	}
	if _, ok := out.Get(labels.KeyCluster); !ok && s.ClusterName != "" {
		out, err = out.With(labels.Label{Source: labels.SourceK8s, Key: labels.KeyCluster, Value: s.ClusterName})
	}
	return out, err
}

func (s *Server) trace(w http.ResponseWriter, r *http.Request) {
	if s.Trace == nil {
		fail(w, fmt.Errorf("%w: this agent has no policy resolver", errBadRequest))
		return
	}
	var req types.TraceRequest
	if err := decodeStrict(w, r, &req); err != nil {
		fail(w, err)
		return
	}
	src, err := s.traceSide(req.SrcEndpoint, req.SrcLabels, "src")
	if err != nil {
		fail(w, err)
		return
	}
	dst, err := s.traceSide(req.DstEndpoint, req.DstLabels, "dst")
	if err != nil {
		fail(w, err)
		return
	}
	if req.Protocol == "" {
		req.Protocol = "TCP"
	}
	proto, ok := protoNumbers[strings.ToUpper(req.Protocol)]
	if !ok {
		fail(w, fmt.Errorf("%w: protocol %q: want TCP, UDP, SCTP or ICMP", errBadRequest, req.Protocol))
		return
	}
	hreq, err := traceRequest(req, strings.ToUpper(req.Protocol))
	if err != nil {
		fail(w, err)
		return
	}
	res := s.Trace(src, dst, proto, req.Port)
	out := wireTrace(res)
	if hreq != nil {
		if out.HTTP, err = traceHTTP(res, hreq); err != nil {
			fail(w, err)
			return
		}
	}
	reply(w, http.StatusOK, out)
}

// Services is the service manager as the API uses it.
type Services interface {
	Upsert(ctx context.Context, s *service.Service) error
	Delete(ctx context.Context, namespace, name string) error
	Get(namespace, name string) (service.Status, error)
	List() []service.Status
}

func (s *Server) services(w http.ResponseWriter) bool {
	if s.Services == nil {
		fail(w, fmt.Errorf("%w: this agent manages no services", errBadRequest))
		return false
	}
	return true
}

func (s *Server) listServices(w http.ResponseWriter, r *http.Request) {
	if !s.services(w) {
		return
	}
	replyAs[[]types.ServiceStatus](w, s.Services.List())
}

// upsertService takes one service as YAML or JSON.
func (s *Server) upsertService(w http.ResponseWriter, r *http.Request) {
	if !s.services(w) {
		return
	}
	svc, ok := parseService(w, r)
	if !ok {
		return
	}
	if err := s.Services.Upsert(r.Context(), svc); err != nil {
		fail(w, err)
		return
	}
	replyAs[types.Service](w, svc)
}

// validateService parses and validates one service as YAML or JSON and
// stores nothing (the CLI checks every document before it sends any); it
// needs no service manager.
func (s *Server) validateService(w http.ResponseWriter, r *http.Request) {
	if svc, ok := parseService(w, r); ok {
		replyAs[types.Service](w, svc)
	}
}

// parseService reads the request's service, or answers with the error.
func parseService(w http.ResponseWriter, r *http.Request) (*service.Service, bool) {
	body, err := readBody(w, r, serviceBodyLimit)
	if err == nil {
		var svc *service.Service
		if svc, err = service.Parse(body); err == nil {
			if _, ok := svc.Metadata.Annotations[service.SourceAnnotation]; !ok {
				return svc, true
			}
			// The watchers remove the services with this mark whose
			// Service object is gone; a user's service must not pass
			// for one.
			err = fmt.Errorf("%w: metadata.annotations[%s]: set only by the agents, on the services they store from Kubernetes Service objects", service.ErrInvalid, service.SourceAnnotation)
		}
	}
	fail(w, err)
	return nil, false
}

func (s *Server) getService(w http.ResponseWriter, r *http.Request) {
	if !s.services(w) {
		return
	}
	st, err := s.Services.Get(r.PathValue("ns"), r.PathValue("name"))
	if err != nil {
		fail(w, err)
		return
	}
	replyAs[types.ServiceStatus](w, st)
}

func (s *Server) deleteService(w http.ResponseWriter, r *http.Request) {
	if !s.services(w) {
		return
	}
	if err := s.Services.Delete(r.Context(), r.PathValue("ns"), r.PathValue("name")); err != nil {
		fail(w, err)
		return
	}
	reply(w, http.StatusOK, map[string]string{"deleted": r.PathValue("ns") + "/" + r.PathValue("name")})
}
