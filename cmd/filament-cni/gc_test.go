package main

import (
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"

	apitypes "github.com/filament-net/filament/agent/api/types"
)

// GC deletes a stale attachment by its container and interface, not by
// the endpoint ID it listed: IDs are reused at once, and a DEL and an ADD
// of other containers may run beside GC (the CNI spec allows it), so by
// the time of the delete the listed ID may be a new pod's. Before, GC
// deleted by ID and could remove that new pod's endpoint.
func TestGCDeletesByContainer(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var deletes []string
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet:
			json.NewEncoder(w).Encode([]apitypes.Endpoint{
				{ID: 3, ContainerID: "stale", IfName: "eth0", Network: "filament"},
				{ID: 4, ContainerID: "kept", IfName: "eth0", Network: "filament"},
			})
		case http.MethodDelete:
			mu.Lock()
			deletes = append(deletes, r.URL.RequestURI())
			mu.Unlock()
			w.WriteHeader(http.StatusNoContent)
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	conf, _ := json.Marshal(map[string]any{"cniVersion": "1.1.0", "name": "filament", "type": "filament", "agentSocket": sock,
		"cni.dev/valid-attachments": []map[string]string{{"containerID": "kept", "ifname": "eth0"}}})
	if err := cmdGC(&skel.CmdArgs{StdinData: conf}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(deletes) != 1 || deletes[0] != "/v1/endpoints?containerID=stale&ifName=eth0" {
		t.Fatalf("GC deleted %q, want the stale container's interface by name", deletes)
	}
}
