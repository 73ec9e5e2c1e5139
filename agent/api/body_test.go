package api_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/filament-net/filament/agent/api"
	"github.com/filament-net/filament/agent/api/client"
	"github.com/filament-net/filament/agent/endpoint"
	"github.com/filament-net/filament/agent/policy"
	"github.com/filament-net/filament/agent/service"
)

// The request body limits of the API (see server.go).
const (
	policyLimit   = 8 << 20
	serviceLimit  = 16 << 20
	jsonBodyLimit = 1 << 20
)

const smallPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cut}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
`

// padded returns doc followed by YAML comment lines up to exactly n bytes:
// a body a limit reader cuts at any point still parses as doc alone.
func padded(doc string, n int) string {
	var b strings.Builder
	b.WriteString(doc)
	line := "# " + strings.Repeat("x", 77) + "\n"
	for b.Len()+len(line) <= n {
		b.WriteString(line)
	}
	b.WriteString(strings.Repeat("#", n-b.Len()))
	return b.String()
}

// recordingServices counts the services the API hands on.
type recordingServices struct{ upserts int }

func (r *recordingServices) Upsert(context.Context, *service.Service) error { r.upserts++; return nil }
func (*recordingServices) Delete(context.Context, string, string) error     { return nil }
func (*recordingServices) Get(string, string) (service.Status, error) {
	return service.Status{}, service.ErrNotFound
}
func (*recordingServices) List() []service.Status { return nil }

// recordingEndpoints counts endpoint creations.
type recordingEndpoints struct {
	stubEndpoints
	creates *int
}

func (r recordingEndpoints) Create(ctx context.Context, req endpoint.CreateRequest) (endpoint.Endpoint, error) {
	*r.creates++
	return endpoint.Endpoint{ID: 1}, nil
}

// A body one byte over a limit is refused with 413 and an error naming the
// limit, and nothing is applied: before, the body was cut at the limit and
// what remained (here: a whole policy, its trailing comment cut) imported.
func TestBodyOverLimitIsRefused(t *testing.T) {
	repo, err := policy.NewRepository("")
	if err != nil {
		t.Fatal(err)
	}
	svcs := &recordingServices{}
	creates := 0
	s := &api.Server{Endpoints: recordingEndpoints{creates: &creates}, Identities: stubIdentities{},
		Policies: repo, Services: svcs}
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()

	service := "metadata: {name: web}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{port: 80, targetPort: 8080}]\nbackends: [{ip: 10.0.1.1, node: n1}]\n"
	endpointReq := `{"containerID":"c","ifName":"eth0","netns":"/x","labels":["` + strings.Repeat("a", jsonBodyLimit) + `"]}`
	cases := []struct {
		name, method, path, body, limit string
		applied                         func() bool
	}{
		{"policy import", "PUT", "/v1/policies", padded(smallPolicy, policyLimit+1), "8 MiB",
			func() bool { return len(repo.List()) != 0 }},
		{"service upsert", "PUT", "/v1/services", padded(service, serviceLimit+1), "16 MiB",
			func() bool { return svcs.upserts != 0 }},
		{"endpoint create", "POST", "/v1/endpoints", endpointReq, "1 MiB",
			func() bool { return creates != 0 }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, body := do(t, srv, c.method, c.path, c.body)
			if status != http.StatusRequestEntityTooLarge {
				t.Errorf("status %d, want 413; body %.200s", status, body)
			}
			if !strings.Contains(body, `"too_large"`) || !strings.Contains(body, c.limit) {
				t.Errorf("body %.300s: want code too_large and the limit %s named", body, c.limit)
			}
			if c.applied() {
				t.Errorf("something was applied from a body over the limit")
			}
		})
	}

	t.Run("at the limit is read whole", func(t *testing.T) {
		status, body := do(t, srv, "PUT", "/v1/policies", padded(smallPolicy, policyLimit))
		if status != http.StatusOK || len(repo.List()) != 1 {
			t.Fatalf("status %d, %d policies; want 200 and 1: %.300s", status, len(repo.List()), body)
		}
	})
}

// The client (and so the CLI, which prints the error) gets the server's
// message about the limit, not a broken pipe, over the agent's unix socket.
func TestClientReportsBodyLimit(t *testing.T) {
	repo, err := policy.NewRepository("")
	if err != nil {
		t.Fatal(err)
	}
	s := &api.Server{Endpoints: stubEndpoints{}, Identities: stubIdentities{}, Policies: repo}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	if err := s.Serve(sock); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())

	// Far over the limit, so the server stops reading long before the end.
	_, err = client.New(sock).ImportPolicies(context.Background(), []byte(padded(smallPolicy, 3*policyLimit)))
	var ae *client.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusRequestEntityTooLarge || !strings.Contains(err.Error(), "8 MiB") {
		t.Fatalf("err = %v (%T), want the server's 413 naming the 8 MiB limit", err, err)
	}
	if n := len(repo.List()); n != 0 {
		t.Fatalf("%d policies imported from a body over the limit", n)
	}
}
