package api

import (
	"fmt"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// benchDocuments returns n CiliumNetworkPolicy documents as one `---`
// separated stream, each with an ingress and an egress rule.
func benchDocuments(n int) []byte {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, `---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: p-%d
  namespace: ns-%d
spec:
  endpointSelector:
    matchLabels: {app: app-%d}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: web-%d}
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
  egress:
  - toCIDR: [10.%d.0.0/16]
`, i, i%50, i, i, i%250)
	}
	return []byte(b.String())
}

// BenchmarkParse10kPolicies times Parse on 10,000 policies (goal: under
// 2 s) beside two baselines from the same run: parsing 1,000 policies
// times ten (what linear parsing costs), and converting the same 10,000
// documents from YAML to JSON one at a time (the YAML decoding no parser
// of this input avoids).
func BenchmarkParse10kPolicies(b *testing.B) {
	const n = 10000
	all, tenth := benchDocuments(n), benchDocuments(n/10)
	docs := splitDocuments(all)
	timed := func(f func()) time.Duration {
		start := time.Now()
		f()
		return time.Since(start)
	}
	var full, scaled, yamlOnly, cpu time.Duration
	for range b.N {
		before := cpuTime()
		full += timed(func() {
			ps, err := Parse(all)
			if err != nil || len(ps) != n {
				b.Fatalf("Parse: %d policies, %v", len(ps), err)
			}
		})
		cpu += cpuTime() - before
		scaled += 10 * timed(func() {
			if _, err := Parse(tenth); err != nil {
				b.Fatal(err)
			}
		})
		yamlOnly += timed(func() {
			for _, d := range docs {
				if _, err := yaml.YAMLToJSON(d.text); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	per := func(d time.Duration) float64 { return d.Seconds() / float64(b.N) }
	b.ReportMetric(per(full), "s/10k-policies")
	b.ReportMetric(per(scaled), "s/1k-policies×10")
	b.ReportMetric(per(yamlOnly), "s/10k-yaml-to-json")
	b.ReportMetric(per(cpu), "cpu-s/10k-policies")
	b.Logf("parse 10,000 policies: %.2fs (%.2fs of CPU, on %d CPUs); baseline 1,000 × 10: %.2fs; YAML to JSON alone: %.2fs",
		per(full), per(cpu), runtime.GOMAXPROCS(0), per(scaled), per(yamlOnly))
}

// cpuTime is the CPU time (user and system) the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
