package lab_test

import (
	"context"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// BenchmarkKafka: franz-go producing 1 KiB records to a kfake broker in a
// pod on the same node, through the node's proxy (rules.kafka: role
// produce, topic topic1) beside the same pods under an L4-only rule:
// records/s and MB/s, the proxy's CPU per record, and the CPU per record of
// this process, which runs the client and the broker (in the pods'
// namespaces). Two load shapes: streaming (records produced as fast as the
// client's buffer takes them, the client pipelining up to 5 requests:
// throughput) and flushing after every 1,000 records (a request or two at
// a time: mostly a measure of each round trip). Each shape runs 5 s under
// each policy twice, in the order L7, L4, L4, L7, so that drift over the
// runs (this process's heap, the machine's other load) weighs on both
// sides alike; the figures are the means.
func BenchmarkKafka(b *testing.B) {
	l := labtest.Up(b, 1, 0)
	kafka := labtest.Pod(b, l, "n1", "kafka", "app=kafka")
	producer := labtest.Pod(b, l, "n1", "producer", "app=producer")
	// The broker discards what it is sent (kfake's option for produce
	// benchmarks): a broker keeping gigabytes in this process made each
	// run's figure depend on how much the runs before it had stored.
	broker := kafkaBroker(b, lab.NetNSPath(kafka.NetNS), kafka.IP, kfake.BlackholeProduce())
	l7 := strings.Split(kafkaPolicy, "  - fromEndpoints: [{matchLabels: {app: consumer}}]")[0]
	l4 := strings.Replace(l7, "      rules:\n        kafka:\n        - role: produce\n          topic: topic1\n", "", 1)
	n1, _ := l.Node("n1")
	px := findProxy(b, n1.NetNS)
	value := make([]byte, 1024)
	type figures struct{ recs, proxyUs, selfUs float64 }
	// run produces for 5 s under policy. flush: wait for every 1,000
	// records' acks.
	run := func(policy string, flush, profile bool) figures {
		labtest.ImportPolicy(b, l, "n1", policy)
		time.Sleep(time.Second) // the policy in force
		cl := kafkaClient(b, lab.NetNSPath(producer.NetNS), broker, kgo.ProducerLinger(time.Millisecond))
		defer cl.Close()
		if err := produceTo(cl, "topic1", "warm-up"); err != nil {
			b.Fatalf("produce: %v", err)
		}
		ctx := context.Background()
		var profiled <-chan struct{}
		if profile {
			profiled = px.profile(b, 4) // FILAMENT_PROXY_PROFILE=FILE
		}
		var acked atomic.Int64
		var failed atomic.Pointer[error]
		done := func(_ *kgo.Record, err error) {
			if err != nil {
				failed.CompareAndSwap(nil, &err)
				return
			}
			acked.Add(1)
		}
		proxyCPU, selfCPU := cpuSeconds(b, px.pid), cpuSeconds(b, os.Getpid())
		start := time.Now()
		for time.Since(start) < 5*time.Second && failed.Load() == nil {
			for range 1000 {
				cl.Produce(ctx, &kgo.Record{Topic: "topic1", Value: value}, done) // blocks while the buffer is full
			}
			if flush {
				if err := cl.Flush(ctx); err != nil {
					b.Fatal(err)
				}
			}
		}
		n, d := float64(acked.Load()), time.Since(start).Seconds()
		f := figures{recs: n / d, proxyUs: 1e6 * (cpuSeconds(b, px.pid) - proxyCPU) / n, selfUs: 1e6 * (cpuSeconds(b, os.Getpid()) - selfCPU) / n}
		if err := cl.Flush(ctx); err != nil {
			b.Fatal(err)
		}
		if profiled != nil {
			<-profiled
		}
		if err := failed.Load(); err != nil {
			b.Fatalf("produce: %v", *err)
		}
		return f
	}
	for _, shape := range []struct {
		name  string
		flush bool
	}{{"streaming", false}, {"flush every 1,000", true}} {
		var sum [2]figures // proxied, direct
		for i, proxied := range []bool{true, false, false, true} {
			policy := l4
			if proxied {
				policy = l7
			}
			f := run(policy, shape.flush, proxied && i == 0 && !shape.flush)
			b.Logf("%s, %s: %.0f records/s; CPU per record: the proxy %.2f µs, client and broker %.2f µs",
				shape.name, map[bool]string{true: "proxy", false: "direct"}[proxied], f.recs, f.proxyUs, f.selfUs)
			k := 1
			if proxied {
				k = 0
			}
			sum[k].recs += f.recs / 2
			sum[k].proxyUs += f.proxyUs / 2
			sum[k].selfUs += f.selfUs / 2
		}
		p, d := sum[0], sum[1]
		b.Logf("franz-go produce, 1 KiB records, %s (means): proxy %.0f records/s (%.1f MB/s), direct %.0f records/s (%.1f MB/s): %.0f%%; CPU per record through the proxy: the proxy %.2f µs, client and broker %.2f µs (direct: %.2f µs)",
			shape.name, p.recs, p.recs*1024/1e6, d.recs, d.recs*1024/1e6, 100*p.recs/d.recs, p.proxyUs, p.selfUs, d.selfUs)
		if !shape.flush {
			b.ReportMetric(p.recs, "proxy-records/s")
			b.ReportMetric(d.recs, "direct-records/s")
			b.ReportMetric(p.recs/d.recs, "proxy/direct")
		}
	}
	b.ReportMetric(0, "ns/op")
}
