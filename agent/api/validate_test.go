package api_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/filament-net/filament/agent/api"
	"github.com/filament-net/filament/agent/api/client"
	"github.com/filament-net/filament/agent/api/types"
)

// Validating a service (the CLI validates every document before it sends
// any) parses and validates, stores nothing and needs no service manager.
func TestValidateServiceStoresNothing(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	s := &api.Server{}
	if err := s.Serve(sock); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	c := client.New(sock)
	ctx := context.Background()
	doc := "metadata: {name: web, namespace: shop}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n"
	svc, err := c.ValidateService(ctx, []byte(doc))
	if err != nil || svc.Key() != "shop/web" || svc.Spec.Ports[0].Port != 80 {
		t.Fatalf("valid service: %+v, %v", svc, err)
	}
	if _, err := c.ValidateService(ctx, []byte("metadata: {name: web}\nspec: {ports: [{port: 0}]}\n")); !client.IsCode(err, types.CodeInvalid) {
		t.Fatalf("invalid service: %v", err)
	}
	// An upsert to an agent without services is refused, as before.
	if _, err := c.UpsertService(ctx, []byte(doc)); !client.IsCode(err, types.CodeInvalid) || !strings.Contains(err.Error(), "manages no services") {
		t.Fatalf("upsert: %v", err)
	}
	// With services, validating still stores nothing.
	rec := &recordingServices{}
	s.Services = rec
	if _, err := c.ValidateService(ctx, []byte(doc)); err != nil || rec.upserts != 0 {
		t.Fatalf("validation with services: %v, %d upserts", err, rec.upserts)
	}
	if _, err := c.UpsertService(ctx, []byte(doc)); err != nil || rec.upserts != 1 {
		t.Fatalf("upsert: %v, %d upserts", err, rec.upserts)
	}
}

// A user's service may not carry the mark of a service made from a
// Kubernetes Service object: the agents' watchers remove such services
// when no Service object gives them, so it must not pass for one. Refused
// with the annotation named, nothing stored.
func TestUserServiceCannotClaimKubernetesSource(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	rec := &recordingServices{}
	s := &api.Server{Services: rec}
	if err := s.Serve(sock); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	c := client.New(sock)
	ctx := context.Background()
	doc := "metadata: {name: web, annotations: {filament.io/source: kubernetes}}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n"
	for what, call := range map[string]func(context.Context, []byte) (types.Service, error){"upsert": c.UpsertService, "validate": c.ValidateService} {
		if _, err := call(ctx, []byte(doc)); !client.IsCode(err, types.CodeInvalid) || !strings.Contains(err.Error(), "metadata.annotations[filament.io/source]") {
			t.Fatalf("%s: %v", what, err)
		}
	}
	if rec.upserts != 0 {
		t.Fatalf("%d upserts", rec.upserts)
	}
}
