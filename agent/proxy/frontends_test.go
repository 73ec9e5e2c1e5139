package proxy

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"testing"
)

// fakeFrontends gives backend for connections to frontend, and records
// the tuples it was asked for.
type fakeFrontends struct {
	frontend, backend netip.AddrPort
	mu                sync.Mutex
	asked             []netip.AddrPort
}

func (f *fakeFrontends) Backend(src, frontend netip.AddrPort) (netip.AddrPort, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked = append(f.asked, frontend)
	return f.backend, frontend == f.frontend
}

// A NodePort connection the datapath steered here untranslated (its
// socket's address is the frontend's): the backend the datapath gave it
// is where it goes, whose policy decides, and whom the proxy dials.
func TestNodePortConnectionGoesToItsBackend(t *testing.T) {
	uln, err := net.Listen("tcp", netip.AddrPortFrom(serverIP, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	usrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "backend %s", r.URL.Path)
	})}
	go usrv.Serve(uln)
	t.Cleanup(func() { usrv.Close() })
	backend := netip.MustParseAddrPort(uln.Addr().String())
	frontend := netip.MustParseAddrPort("127.0.0.3:30090") // nothing listens there
	fe := &fakeFrontends{frontend: frontend, backend: backend}
	h := newHarnessTo(t, frontend, Options{Frontends: fe})
	h.set(PortPolicy{Endpoint: serverIP, Direction: Ingress, Port: backend.Port(), Protocol: "TCP",
		Rules: []PeerRules{{Remotes: []uint32{clientID}, HTTP: []HTTPRule{{Method: "GET", Path: "/public/.*"}}}}})
	c := h.client()
	for path, want := range map[string]int{"/public/a": 200, "/private": 403} {
		resp, err := c.Get(h.url(path))
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("GET %s: %d %q, want %d (the backend's policy)", path, resp.StatusCode, body, want)
		}
		if want == 200 && string(body) != "backend "+path {
			t.Fatalf("GET %s: answered %q, want the backend's answer", path, body)
		}
	}
	fe.mu.Lock()
	defer fe.mu.Unlock()
	if len(fe.asked) == 0 || fe.asked[0] != frontend {
		t.Fatalf("asked for %v, want the frontend %v (the socket's own address)", fe.asked, frontend)
	}
}

// struct proxy_backend holds the address and port as the packet has them
// (network order), read here as host integers.
func TestBackendAddrFromTheMapsBytes(t *testing.T) {
	raw := []byte{10, 0, 0, 2, 0x1f, 0x90} // 10.0.0.2, port 8080
	b := proxyBackend{Addr: binary.NativeEndian.Uint32(raw[:4]), Port: binary.NativeEndian.Uint16(raw[4:6])}
	if got, want := backendAddr(b), netip.MustParseAddrPort("10.0.0.2:8080"); got != want {
		t.Fatalf("backend %v, want %v", got, want)
	}
}
