package lab_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// BenchmarkKafka: franz-go producing 1 KiB records to a kfake broker in a
// pod on the same node, for 5 s, through the node's proxy (rules.kafka:
// role produce, topic topic1) beside the same pods under an L4-only rule,
// in one run: records/s and MB/s. The broker and the client run in this
// process (their namespaces are the pods'), the same in both runs.
func BenchmarkKafka(b *testing.B) {
	l := labtest.Up(b, 1, 0)
	kafka := labtest.Pod(b, l, "n1", "kafka", "app=kafka")
	producer := labtest.Pod(b, l, "n1", "producer", "app=producer")
	broker := kafkaBroker(b, lab.NetNSPath(kafka.NetNS), kafka.IP)
	l7 := strings.Split(kafkaPolicy, "  - fromEndpoints: [{matchLabels: {app: consumer}}]")[0]
	l4 := strings.Replace(l7, "      rules:\n        kafka:\n        - role: produce\n          topic: topic1\n", "", 1)
	value := make([]byte, 1024)
	run := func(policy string) (recs, mbs float64) {
		labtest.ImportPolicy(b, l, "n1", policy)
		time.Sleep(time.Second) // the policy in force
		cl := kafkaClient(b, lab.NetNSPath(producer.NetNS), broker, kgo.ProducerLinger(time.Millisecond))
		defer cl.Close()
		if err := produceTo(cl, "topic1", "warm-up"); err != nil {
			b.Fatalf("produce: %v", err)
		}
		ctx := context.Background()
		start := time.Now()
		n := 0
		var failed error
		for time.Since(start) < 5*time.Second {
			for range 1000 {
				cl.Produce(ctx, &kgo.Record{Topic: "topic1", Value: value}, func(_ *kgo.Record, err error) {
					if err != nil && failed == nil {
						failed = err
					}
				})
			}
			if err := cl.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			n += 1000
		}
		d := time.Since(start).Seconds()
		if failed != nil {
			b.Fatalf("produce: %v", failed)
		}
		return float64(n) / d, float64(n) * 1024 / d / 1e6
	}
	proxied, proxiedMB := run(l7)
	direct, directMB := run(l4)
	b.Logf("franz-go produce, 1 KiB records: proxy %.0f records/s (%.1f MB/s), direct %.0f records/s (%.1f MB/s): %.0f%%",
		proxied, proxiedMB, direct, directMB, 100*proxied/direct)
	b.ReportMetric(proxied, "proxy-records/s")
	b.ReportMetric(direct, "direct-records/s")
	b.ReportMetric(proxied/direct, "proxy/direct")
	b.ReportMetric(0, "ns/op")
}
