// Package client is the agent API's client: the CLI, the CNI plugin, the
// lab and users' programs talk to an agent over its unix socket with it.
// It imports only the API's contract (agent/api/types) and the standard
// library.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/filament-net/filament/agent/api/types"
)

// ErrAgentDown: nothing answers on the socket.
var ErrAgentDown = errors.New("filament-agent is not reachable")

// APIError is a non-2xx answer of the agent.
type APIError struct {
	Status int
	Error_ types.Error
}

func (e *APIError) Error() string { return e.Error_.Message }

// IsCode reports whether err is an APIError with that code ("not_found", "invalid", ...).
func IsCode(err error, code string) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Error_.Code == code
}

// Client talks to one agent.
type Client struct {
	socket string
	hc     *http.Client
}

// SocketPath is the socket a client uses: the argument, else
// $FILAMENT_API_SOCKET, else the default.
func SocketPath(flag string) string {
	if flag != "" {
		return flag
	}
	if env := os.Getenv(types.SocketEnv); env != "" {
		return env
	}
	return types.DefaultSocket
}

// New returns a client of the agent listening at socket.
func New(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr, Timeout: 60 * time.Second}}
}

func (c *Client) do(ctx context.Context, method, path string, body io.Reader, contentType string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://agent"+path, body)
	if err != nil {
		return err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return fmt.Errorf("%w at %s: %v (is it running?)", ErrAgentDown, c.socket, op.Err)
		}
		return fmt.Errorf("agent at %s: %w", c.socket, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("agent at %s: %w", c.socket, err)
	}
	if resp.StatusCode >= 300 {
		ae := &APIError{Status: resp.StatusCode}
		if json.Unmarshal(b, &ae.Error_) != nil || ae.Error_.Message == "" {
			ae.Error_.Message = fmt.Sprintf("agent answered %s", resp.Status)
		}
		return ae
	}
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("agent answer: %w", err)
		}
	}
	return nil
}

func jsonBody(v any) io.Reader {
	b, _ := json.Marshal(v)
	return bytes.NewReader(b)
}

// Status of the agent.
func (c *Client) Status(ctx context.Context) (types.Status, error) {
	var s types.Status
	return s, c.do(ctx, http.MethodGet, "/v1/status", nil, "", &s)
}

// CreateEndpoint asks for a new endpoint.
func (c *Client) CreateEndpoint(ctx context.Context, r types.EndpointRequest) (types.Endpoint, error) {
	var ep types.Endpoint
	return ep, c.do(ctx, http.MethodPost, "/v1/endpoints", jsonBody(r), "application/json", &ep)
}

// Endpoints lists the node's endpoints.
func (c *Client) Endpoints(ctx context.Context) ([]types.Endpoint, error) {
	var eps []types.Endpoint
	return eps, c.do(ctx, http.MethodGet, "/v1/endpoints", nil, "", &eps)
}

// Endpoint gets one endpoint by ID, with its enforcement.
func (c *Client) Endpoint(ctx context.Context, id uint16) (types.EndpointView, error) {
	var ep types.EndpointView
	return ep, c.do(ctx, http.MethodGet, "/v1/endpoints/"+strconv.Itoa(int(id)), nil, "", &ep)
}

// LookupEndpoint finds the endpoint of a container's interface.
func (c *Client) LookupEndpoint(ctx context.Context, containerID, ifName string) (types.Endpoint, error) {
	var eps []types.Endpoint
	q := url.Values{"containerID": {containerID}, "ifName": {ifName}}
	if err := c.do(ctx, http.MethodGet, "/v1/endpoints?"+q.Encode(), nil, "", &eps); err != nil {
		return types.Endpoint{}, err
	}
	return eps[0], nil
}

// DeleteEndpoint deletes endpoint id.
func (c *Client) DeleteEndpoint(ctx context.Context, id uint16) error {
	return c.do(ctx, http.MethodDelete, "/v1/endpoints/"+strconv.Itoa(int(id)), nil, "", nil)
}

// DeleteContainer deletes a container interface's endpoint, if any.
func (c *Client) DeleteContainer(ctx context.Context, containerID, ifName string) error {
	q := url.Values{"containerID": {containerID}, "ifName": {ifName}}
	return c.do(ctx, http.MethodDelete, "/v1/endpoints?"+q.Encode(), nil, "", nil)
}

// Identities lists identities.
func (c *Client) Identities(ctx context.Context) ([]types.IdentityView, error) {
	var ids []types.IdentityView
	return ids, c.do(ctx, http.MethodGet, "/v1/identities", nil, "", &ids)
}

// Identity gets one identity.
func (c *Client) Identity(ctx context.Context, id uint32) (types.IdentityView, error) {
	var v types.IdentityView
	return v, c.do(ctx, http.MethodGet, "/v1/identities/"+strconv.FormatUint(uint64(id), 10), nil, "", &v)
}

// ImportPolicies sends YAML or JSON policy documents for the cluster.
func (c *Client) ImportPolicies(ctx context.Context, doc []byte) (types.PolicyImportResult, error) {
	return c.ImportPoliciesScoped(ctx, doc, "")
}

// ImportPoliciesScoped is ImportPolicies with a scope: "" (the cluster's)
// or "local" (this node only).
func (c *Client) ImportPoliciesScoped(ctx context.Context, doc []byte, scope string) (types.PolicyImportResult, error) {
	var r types.PolicyImportResult
	return r, c.do(ctx, http.MethodPut, "/v1/policies"+scopeQuery(scope), bytes.NewReader(doc), "application/yaml", &r)
}

func scopeQuery(scope string) string {
	if scope == "" {
		return ""
	}
	return "?scope=" + url.QueryEscape(scope)
}

// Policies lists stored policies.
func (c *Client) Policies(ctx context.Context) ([]types.Policy, error) {
	var ps []types.Policy
	return ps, c.do(ctx, http.MethodGet, "/v1/policies", nil, "", &ps)
}

// Policy gets one policy by key (types.Policy.Key).
func (c *Client) Policy(ctx context.Context, key string) (types.PolicyView, error) {
	var p types.PolicyView
	return p, c.do(ctx, http.MethodGet, "/v1/policies/"+key, nil, "", &p)
}

// DeletePolicy deletes one policy by key from the cluster.
func (c *Client) DeletePolicy(ctx context.Context, key string) (types.PolicyImportResult, error) {
	return c.DeletePolicyScoped(ctx, key, "")
}

// DeletePolicyScoped is DeletePolicy with a scope (see ImportPoliciesScoped).
func (c *Client) DeletePolicyScoped(ctx context.Context, key, scope string) (types.PolicyImportResult, error) {
	var r types.PolicyImportResult
	return r, c.do(ctx, http.MethodDelete, "/v1/policies/"+key+scopeQuery(scope), nil, "", &r)
}

// Trace asks how policy treats a flow.
func (c *Client) Trace(ctx context.Context, r types.TraceRequest) (types.TraceResult, error) {
	var out types.TraceResult
	return out, c.do(ctx, http.MethodPost, "/v1/policy-trace", jsonBody(r), "application/json", &out)
}

// Monitor streams datapath events matching the filter to f until ctx ends.
func (c *Client) Monitor(ctx context.Context, endpoint uint16, typ string, f func(types.Event)) error {
	return c.MonitorConnected(ctx, endpoint, typ, nil, f)
}

// MonitorConnected is Monitor calling connected (when not nil) as soon as
// the agent has accepted the stream, before the first event.
func (c *Client) MonitorConnected(ctx context.Context, endpoint uint16, typ string, connected func(), f func(types.Event)) error {
	q := url.Values{}
	if endpoint != 0 {
		q.Set("endpoint", strconv.Itoa(int(endpoint)))
	}
	if typ != "" {
		q.Set("type", typ)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent/v1/monitor?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	hc := *c.hc
	hc.Timeout = 0
	resp, err := hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return fmt.Errorf("%w at %s: %v (is it running?)", ErrAgentDown, c.socket, op.Err)
		}
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		ae := &APIError{Status: resp.StatusCode}
		json.Unmarshal(b, &ae.Error_)
		return ae
	}
	if connected != nil {
		connected()
	}
	dec := json.NewDecoder(resp.Body)
	for {
		var ev types.Event
		if err := dec.Decode(&ev); err != nil {
			if ctx.Err() != nil || errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		f(ev)
	}
}

// Nodes lists the cluster's nodes as this agent sees them.
func (c *Client) Nodes(ctx context.Context) ([]types.Node, error) {
	var ns []types.Node
	return ns, c.do(ctx, http.MethodGet, "/v1/nodes", nil, "", &ns)
}

// ClusterMesh reports the remote clusters this agent follows.
func (c *Client) ClusterMesh(ctx context.Context) ([]types.ClusterStatus, error) {
	var st []types.ClusterStatus
	return st, c.do(ctx, http.MethodGet, "/v1/clustermesh", nil, "", &st)
}

// UpsertService creates or replaces one service (YAML or JSON).
func (c *Client) UpsertService(ctx context.Context, doc []byte) (types.Service, error) {
	var s types.Service
	return s, c.do(ctx, http.MethodPut, "/v1/services", bytes.NewReader(doc), "application/yaml", &s)
}

// ValidateService parses and validates one service (YAML or JSON) as the
// agent would store it, storing nothing.
func (c *Client) ValidateService(ctx context.Context, doc []byte) (types.Service, error) {
	var s types.Service
	return s, c.do(ctx, http.MethodPost, "/v1/services/validate", bytes.NewReader(doc), "application/yaml", &s)
}

// Services lists the services as this node load-balances them.
func (c *Client) Services(ctx context.Context) ([]types.ServiceStatus, error) {
	var out []types.ServiceStatus
	return out, c.do(ctx, http.MethodGet, "/v1/services", nil, "", &out)
}

// Service gets one service.
func (c *Client) Service(ctx context.Context, namespace, name string) (types.ServiceStatus, error) {
	var out types.ServiceStatus
	return out, c.do(ctx, http.MethodGet, "/v1/services/"+url.PathEscape(namespace)+"/"+url.PathEscape(name), nil, "", &out)
}

// DeleteService deletes one service.
func (c *Client) DeleteService(ctx context.Context, namespace, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/services/"+url.PathEscape(namespace)+"/"+url.PathEscape(name), nil, "", nil)
}

// Encryption reports the node's transparent encryption.
func (c *Client) Encryption(ctx context.Context) (types.EncryptionStatus, error) {
	var out types.EncryptionStatus
	return out, c.do(ctx, http.MethodGet, "/v1/encryption", nil, "", &out)
}

// RotateKey makes the node rotate its encryption key; it returns the new public key.
func (c *Client) RotateKey(ctx context.Context) (string, error) {
	var out map[string]string
	err := c.do(ctx, http.MethodPost, "/v1/encryption/rotate-key", nil, "", &out)
	return out["publicKey"], err
}

// Groups reports the cloud groups (toGroups/fromGroups) and their resolution.
func (c *Client) Groups(ctx context.Context) (types.GroupsStatus, error) {
	var out types.GroupsStatus
	return out, c.do(ctx, http.MethodGet, "/v1/groups", nil, "", &out)
}

// FQDNCache lists the node's DNS name cache.
func (c *Client) FQDNCache(ctx context.Context) ([]types.FQDNEntry, error) {
	var out []types.FQDNEntry
	return out, c.do(ctx, http.MethodGet, "/v1/fqdn/cache", nil, "", &out)
}

// RefreshGroups asks the cluster's resolver to resolve every group now.
func (c *Client) RefreshGroups(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/v1/groups/refresh", nil, "", nil)
}

// IdentitiesAllClusters lists every identity the agent knows: its cluster's,
// the reserved ones and those of the remote clusters it follows.
func (c *Client) IdentitiesAllClusters(ctx context.Context) ([]types.IdentityView, error) {
	var ids []types.IdentityView
	return ids, c.do(ctx, http.MethodGet, "/v1/identities?clusters=all", nil, "", &ids)
}

// BPFPolicy lists endpoint id's policy map entries as the kernel holds them.
func (c *Client) BPFPolicy(ctx context.Context, id uint16) ([]types.BPFPolicyEntry, error) {
	var out []types.BPFPolicyEntry
	return out, c.do(ctx, http.MethodGet, "/v1/endpoints/"+strconv.Itoa(int(id))+"/bpf-policy", nil, "", &out)
}

// BPFIPCache lists the node's ipcache as the kernel holds it.
func (c *Client) BPFIPCache(ctx context.Context) ([]types.BPFIPCacheEntry, error) {
	var out []types.BPFIPCacheEntry
	return out, c.do(ctx, http.MethodGet, "/v1/bpf/ipcache", nil, "", &out)
}
