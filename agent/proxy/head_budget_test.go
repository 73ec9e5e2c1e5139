package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// An upgraded connection (a WebSocket, an HTTP/1.x or HTTP/2 CONNECT)
// keeps its request's head for as long as the tunnel runs: the parsed
// request, and the copy judged again when a config is stored. The head
// budget gave the head back at the 101 (2xx), so one source's quiet
// tunnels held heads of up to 1 MiB each, counted nowhere, on each of its
// 4,096 connections (found 2026-12-07 by a review). A tunnel's head is
// counted in its source's share until the tunnel ends: past the share a
// new one is refused 503.
func TestTunnelKeepsItsHeadCounted(t *testing.T) {
	old := headBudget
	headBudget = newByteShare(1<<20, 40<<10)
	t.Cleanup(func() { headBudget = old })
	pad := strings.Repeat("v", 16<<10)
	who := source{clientIP, clientID}
	// tunnels opens tunnels until one is refused (at most 3) and checks
	// that 2 of 16 KiB heads each fit the 40 KiB share and the third does
	// not; then that closing them gives the share back.
	tunnels := func(t *testing.T, open func() (status int, echo func() bool, end func())) {
		var ends []func()
		for i := range 3 {
			status, echo, end := open()
			if i == 2 {
				if status != http.StatusServiceUnavailable {
					t.Errorf("a third tunnel past the source's share: %d, want 503", status)
				}
				if end != nil {
					end()
				}
				break
			}
			if status != http.StatusSwitchingProtocols && status != http.StatusOK {
				t.Fatalf("tunnel %d: %d", i, status)
			}
			if !echo() {
				t.Fatalf("tunnel %d carries nothing", i)
			}
			ends = append(ends, end)
			if held := headBudget.heldBy(who); held < int64(i+1)*int64(len(pad)) {
				t.Errorf("%d tunnels of heads of %d bytes: %d bytes counted", i+1, len(pad), held)
			}
		}
		for _, end := range ends {
			end()
		}
		deadline := time.Now().Add(5 * time.Second)
		for headBudget.heldBy(who) != 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if held := headBudget.heldBy(who); held != 0 {
			t.Errorf("the tunnels ended, %d bytes still counted", held)
		}
	}

	t.Run("HTTP/1.1 upgrade", func(t *testing.T) {
		h := newHarnessTo(t, wsEcho(t), Options{})
		tunnels(t, func() (int, func() bool, func()) {
			c := h.dial()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			fmt.Fprintf(c, "GET /public/ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nX-Pad: %s\r\n\r\n", pad)
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
			if err != nil {
				t.Fatal(err)
			}
			return resp.StatusCode, func() bool {
				io.WriteString(c, "ping\n")
				line, err := br.ReadString('\n')
				return err == nil && line == "ping\n"
			}, func() { c.Close() }
		})
	})

	t.Run("HTTP/2 CONNECT", func(t *testing.T) {
		h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodConnect {
				return
			}
			w.WriteHeader(http.StatusOK)
			rc := http.NewResponseController(w)
			rc.Flush()
			buf := make([]byte, 512)
			for {
				n, err := r.Body.Read(buf)
				if n > 0 {
					w.Write(buf[:n])
					rc.Flush()
				}
				if err != nil {
					return
				}
			}
		}), Options{})
		h.ingress(PeerRules{Remotes: []uint32{clientID}, HTTP: []HTTPRule{{Method: "CONNECT"}}})
		tr := h.transport("HTTP/2")
		defer tr.CloseIdleConnections()
		tunnels(t, func() (int, func() bool, func()) {
			pr, pw := io.Pipe()
			req, err := http.NewRequest(http.MethodConnect, h.url(""), pr)
			if err != nil {
				t.Fatal(err)
			}
			req.Host = "web:80"
			req.Header.Set("X-Pad", pad)
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(resp.Body)
			return resp.StatusCode, func() bool {
					io.WriteString(pw, "ping\n")
					line, err := br.ReadString('\n')
					return err == nil && line == "ping\n"
				}, func() {
					pw.Close()
					resp.Body.Close()
				}
		})
	})
}
