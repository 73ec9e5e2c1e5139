package proxy

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
)

// BenchmarkProxy: keep-alive GETs from parallel clients through the proxy
// (an allowed path rule) and straight to the upstream, side by side, over
// HTTP/1.1 and over h2c (prior knowledge).
func BenchmarkProxy(b *testing.B) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })
	h := newHarness(b, ok, Options{Logger: slog.New(slog.DiscardHandler)})
	h.ingress(PeerRules{HTTP: []HTTPRule{{Method: "GET", Path: "/public/.*"}}})
	for _, proto := range []string{"http1", "h2c"} {
		for _, tc := range []struct{ name, addr string }{{"direct", h.upstream.String()}, {"proxy", h.addr}} {
			b.Run(proto+"/"+tc.name, func(b *testing.B) {
				tr := &http.Transport{MaxIdleConnsPerHost: 64, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					return (&net.Dialer{}).DialContext(ctx, "tcp", tc.addr)
				}}
				if proto == "h2c" {
					tr.Protocols = new(http.Protocols)
					tr.Protocols.SetUnencryptedHTTP2(true)
				}
				defer tr.CloseIdleConnections()
				c := &http.Client{Transport: tr}
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						resp, err := c.Get("http://" + tc.addr + "/public/bench")
						if err != nil {
							b.Error(err)
							return
						}
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if resp.StatusCode != 200 {
							b.Errorf("status %d", resp.StatusCode)
							return
						}
					}
				})
			})
		}
	}
}
