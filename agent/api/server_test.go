package api_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/filament-net/filament/agent/api"
	"github.com/filament-net/filament/agent/api/types"
	"github.com/filament-net/filament/agent/endpoint"
	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipam"
	"github.com/filament-net/filament/agent/policy"
	"github.com/filament-net/filament/agent/policysync"
	"github.com/filament-net/filament/agent/service"
)

// stubEndpoints fails Create with a chosen error.
type stubEndpoints struct{ createErr error }

func (s stubEndpoints) Create(context.Context, endpoint.CreateRequest) (endpoint.Endpoint, error) {
	return endpoint.Endpoint{ID: 1}, s.createErr
}
func (stubEndpoints) Delete(_ context.Context, id uint16) error {
	return endpoint.ErrNotFound
}
func (stubEndpoints) DeleteByContainer(context.Context, string, string) (bool, error) {
	return false, nil
}
func (stubEndpoints) Get(id uint16) (endpoint.Endpoint, error) {
	return endpoint.Endpoint{}, endpoint.ErrNotFound
}
func (stubEndpoints) Lookup(string, string) (endpoint.Endpoint, error) {
	return endpoint.Endpoint{}, endpoint.ErrNotFound
}
func (stubEndpoints) List() []endpoint.Endpoint { return nil }

type stubIdentities struct{}

func (stubIdentities) Get(n identity.NumericIdentity) (identity.Identity, error) {
	return identity.Identity{}, identity.ErrNotFound
}
func (stubIdentities) List() []identity.Identity { return identity.Reserved() }

func server(createErr error) *httptest.Server {
	repo, _ := policy.NewRepository("")
	s := &api.Server{Endpoints: stubEndpoints{createErr}, Identities: stubIdentities{}, Policies: repo,
		Status: func(context.Context) types.Status { return types.Status{NodeName: "n1"} }}
	return httptest.NewServer(s.Handler())
}

func do(t *testing.T, srv *httptest.Server, method, path, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Each component error maps onto its HTTP status and code.
func TestErrorMapping(t *testing.T) {
	cases := []struct {
		err  error
		code int
		name string
	}{
		{endpoint.ErrExists, http.StatusConflict, "exists"},
		{ipam.ErrExhausted, http.StatusInsufficientStorage, "exhausted"},
		{endpoint.ErrInvalid, http.StatusBadRequest, "invalid"},
		{endpoint.ErrUnavailable, http.StatusServiceUnavailable, "unavailable"},
		{fmt.Errorf("%w: again", policysync.ErrBusy), http.StatusServiceUnavailable, "unavailable"},
		{fmt.Errorf("%w: x", policysync.ErrUnreadable), http.StatusConflict, "exists"},
		{fmt.Errorf("%w: again", service.ErrBusy), http.StatusServiceUnavailable, "unavailable"},
		{errors.New("boom"), http.StatusInternalServerError, "internal"},
	}
	for _, c := range cases {
		srv := server(c.err)
		status, body := do(t, srv, "POST", "/v1/endpoints", `{"containerID":"c","ifName":"eth0","netns":"/x"}`)
		srv.Close()
		if status != c.code || !strings.Contains(body, `"code": "`+c.name+`"`) {
			t.Errorf("%v: got %d %s", c.err, status, body)
		}
	}
	srv := server(nil)
	defer srv.Close()
	for _, c := range []struct {
		method, path, body string
		status             int
		want               string
	}{
		{"POST", "/v1/endpoints", `{"containerID":"c","bogus":1}`, 400, "bogus"},
		{"GET", "/v1/endpoints/0", "", 400, "endpoint ID"},
		{"GET", "/v1/endpoints/7", "", 404, "not found"},
		{"GET", "/v1/identities/abc", "", 400, "identity"},
		{"GET", "/v1/identities/70000", "", 404, "not found"},
		{"PUT", "/v1/policies", "", 400, "no policy document"},
		{"DELETE", "/v1/policies/default/nope", "", 404, "default/nope"},
		{"DELETE", "/v1/endpoints", "", 400, "containerID"},
		{"DELETE", "/v1/endpoints?containerID=gone&ifName=eth0", "", 204, ""},
		{"GET", "/v1/status", "", 200, `"nodeName": "n1"`},
		{"GET", "/v1/identities", "", 200, "reserved:world"},
	} {
		status, body := do(t, srv, c.method, c.path, c.body)
		if status != c.status || !strings.Contains(body, c.want) {
			t.Errorf("%s %s: got %d %s", c.method, c.path, status, body)
		}
	}
}
