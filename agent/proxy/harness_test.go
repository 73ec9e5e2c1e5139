package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// Addresses on lo: the client pod, the server pod (the upstream).
var (
	clientIP = netip.MustParseAddr("127.0.0.2")
	serverIP = netip.MustParseAddr("127.0.0.10")
)

const (
	clientID = 6000
	serverID = 5000
	hostID   = 1
)

// harness is a proxy on 127.0.0.1 whose every connection "was going" to
// an upstream on serverIP (the OriginalDst a transparent socket would
// give).
type harness struct {
	t        testing.TB
	p        *Proxy
	addr     string         // the proxy listener
	upstream netip.AddrPort // the original destination
}

func newHarness(t testing.TB, upstream http.Handler, o Options) *harness {
	t.Helper()
	uln, err := net.Listen("tcp", netip.AddrPortFrom(serverIP, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	usrv := &http.Server{Handler: upstream, Protocols: &protocols}
	go usrv.Serve(uln)
	t.Cleanup(func() { usrv.Close() })
	return newHarnessTo(t, netip.MustParseAddrPort(uln.Addr().String()), o)
}

func newHarnessTo(t testing.TB, upstream netip.AddrPort, o Options) *harness {
	t.Helper()
	o.OriginalDst = func(net.Conn) (netip.AddrPort, error) { return upstream, nil }
	if o.Logger == nil {
		// Handlers may still log while the proxy's goroutines unwind
		// after the test: t.Log then panics, so the writer is shut last.
		w := &testWriter{t: t}
		t.Cleanup(w.shut)
		o.Logger = slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	p := New(o)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Serve(ln) }()
	t.Cleanup(func() {
		p.Close()
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
		// The closed connections give their requests' heads back as they
		// unwind: the next test starts with none held (a test asserting
		// what the client holds saw the previous test's tunnel).
		deadline := time.Now().Add(10 * time.Second)
		for headBudget.heldBy(source{clientIP, clientID}) != 0 {
			if time.Now().After(deadline) {
				t.Errorf("the proxy closed, and %d bytes of request heads are still held", headBudget.heldBy(source{clientIP, clientID}))
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
	h := &harness{t: t, p: p, addr: ln.Addr().String(), upstream: upstream}
	h.ingress(PeerRules{Remotes: []uint32{clientID}, HTTP: []HTTPRule{{Method: "GET", Path: "/public/.*"}}})
	return h
}

// testWriter logs to t until shut (a proxy's goroutines may outlive the
// test: t.Log after it panics, "Log in goroutine after ... has completed").
type testWriter struct {
	t      testing.TB
	mu     sync.Mutex
	closed bool
}

func (w *testWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.closed {
		w.t.Log(strings.TrimSpace(string(b)))
	}
	return len(b), nil
}

// shut drops what is written from now on.
func (w *testWriter) shut() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
}

// ipcache is the harness's: the client and server pods, the rest of lo
// the host.
var ipcache = []IPCacheEntry{
	{netip.MustParsePrefix("127.0.0.0/8"), hostID},
	{netip.PrefixFrom(clientIP, 32), clientID},
	{netip.PrefixFrom(serverIP, 32), serverID},
}

// ingress sets the server's ingress policy on the upstream port.
func (h *harness) ingress(rules ...PeerRules) {
	h.t.Helper()
	h.set(PortPolicy{Endpoint: serverIP, Direction: Ingress, Port: h.upstream.Port(), Protocol: "TCP", Rules: rules})
}

func (h *harness) set(pols ...PortPolicy) {
	h.t.Helper()
	if err := h.p.SetConfig(Config{Revision: 1, Policies: pols, IPCache: ipcache}); err != nil {
		h.t.Fatal(err)
	}
}

// dialFrom dials the proxy from the client pod's address.
func (h *harness) dial() net.Conn {
	h.t.Helper()
	c, err := clientDialer().Dial("tcp", h.addr)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	return c
}

func clientDialer() *net.Dialer {
	return &net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(clientIP, 0)), Timeout: 5 * time.Second}
}

// client is an HTTP/1.1 client from the client pod's address.
func (h *harness) client() *http.Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return clientDialer().DialContext(ctx, "tcp", h.addr)
	}, DisableCompression: true}
	h.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

func (h *harness) url(path string) string { return "http://" + h.addr + path }

// curl runs curl from the client pod's address and returns its stdout.
func (h *harness) curl(args ...string) string {
	h.t.Helper()
	if _, err := exec.LookPath("curl"); err != nil {
		h.t.Skip("curl not installed")
	}
	out, err := exec.Command("curl", append([]string{"-sS", "--max-time", "20", "--interface", clientIP.String()}, args...)...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			h.t.Fatalf("curl %v: %v: %s", args, err, ee.Stderr)
		}
		h.t.Fatalf("curl %v: %v", args, err)
	}
	return string(out)
}

// echo is an upstream that answers with what it received.
type echoed struct {
	Proto, Method, Path, Host, Remote string
	Header                            http.Header
	TransferEncoding                  []string
}

func echo(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(echoed{r.Proto, r.Method, r.URL.RequestURI(), r.Host, r.RemoteAddr, r.Header, r.TransferEncoding})
}

func decodeEcho(t testing.TB, s string) echoed {
	t.Helper()
	var e echoed
	if err := json.NewDecoder(strings.NewReader(s)).Decode(&e); err != nil {
		t.Fatalf("upstream answer %q: %v", s, err)
	}
	return e
}

// readResponse reads one response (and its body) from a raw connection.
func readResponse(t testing.TB, br *bufio.Reader, method string) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// records collects the proxy's records.
func (h *harness) records() func(n int) []Record {
	ch, cancel := h.p.Subscribe()
	h.t.Cleanup(cancel)
	return func(n int) []Record {
		h.t.Helper()
		var out []Record
		for len(out) < n {
			select {
			case r := <-ch:
				out = append(out, r)
			case <-time.After(10 * time.Second):
				h.t.Fatalf("got %d records, want %d", len(out), n)
			}
		}
		return out
	}
}

// rawUpstream is an upstream on serverIP that runs serve on each
// connection it accepts (in a goroutine of its own, the connection
// closed after).
func rawUpstream(t testing.TB, serve func(net.Conn)) netip.AddrPort {
	t.Helper()
	uln, err := net.Listen("tcp", net.JoinHostPort(serverIP.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { uln.Close() })
	go func() {
		for {
			c, err := uln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				serve(c)
			}()
		}
	}()
	return netip.MustParseAddrPort(uln.Addr().String())
}
