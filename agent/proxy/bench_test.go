package proxy

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
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

// BenchmarkKafkaProduce: franz-go producing 1 KiB records (1 ms linger)
// to a kfake broker that discards them, through the proxy (a produce rule
// on topic1) and straight to the broker, side by side; an op is one
// record.
func BenchmarkKafkaProduce(b *testing.B) {
	h := newKafkaHarnessOpts(b, []kfake.Opt{kfake.BlackholeProduce()},
		PeerRules{Remotes: []uint32{clientID}, Kafka: []KafkaRule{{Role: "produce", Topic: "topic1"}}})
	value := make([]byte, 1024)
	for _, tc := range []struct{ name, addr string }{{"direct", h.broker.String()}, {"proxy", h.addr}} {
		b.Run(tc.name, func(b *testing.B) {
			cl, err := kgo.NewClient(kgo.SeedBrokers(h.broker.String()), kgo.ProducerLinger(time.Millisecond),
				kgo.Dialer(func(ctx context.Context, _, _ string) (net.Conn, error) {
					return clientDialer().DialContext(ctx, "tcp", tc.addr)
				}))
			if err != nil {
				b.Fatal(err)
			}
			defer cl.Close()
			ctx := context.Background()
			if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "topic1", Value: value}).FirstErr(); err != nil {
				b.Fatal(err)
			}
			var failed atomic.Pointer[error]
			b.SetBytes(int64(len(value)))
			b.ResetTimer()
			for range b.N {
				cl.Produce(ctx, &kgo.Record{Topic: "topic1", Value: value}, func(_ *kgo.Record, err error) {
					if err != nil {
						failed.CompareAndSwap(nil, &err)
					}
				})
			}
			if err := cl.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			if err := failed.Load(); err != nil {
				b.Fatal(*err)
			}
		})
	}
}
