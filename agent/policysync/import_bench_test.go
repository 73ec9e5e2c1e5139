package policysync_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/api"
	"github.com/filament-net/filament/agent/policy"
	policyapi "github.com/filament-net/filament/agent/policy/api"
	"github.com/filament-net/filament/agent/policysync"
	"github.com/filament-net/filament/internal/testutil"
)

// BenchmarkImport10kPolicies: 10,000 CiliumNetworkPolicy documents through
// PUT /v1/policies on an agent's API, stored in one etcd transaction
// (embedded etcd), followed back from the kvstore into the repository and
// handed to a resolver — the import returns once this node enforces the
// set. Baseline from the same run: policyapi.Parse of the same input alone.
func BenchmarkImport10kPolicies(b *testing.B) {
	var docs []string
	for i := range 10000 {
		docs = append(docs, doc(fmt.Sprintf("p%d", i), 1000+i%5000))
	}
	body := strings.Join(docs, "---\n")
	for b.Loop() {
		b.StopTimer()
		kv := testutil.EtcdClient(b)
		repo, err := policy.NewRepository("")
		if err != nil {
			b.Fatal(err)
		}
		res := policy.NewResolver(policy.ModeDefault)
		c, cancel := context.WithCancel(context.Background())
		store, err := policysync.Start(c, policysync.Config{Cluster: "c1", KV: kv, Repo: repo,
			Apply: func() error { res.SetPolicies(repo.List()); return nil }})
		if err != nil {
			b.Fatal(err)
		}
		srv := httptest.NewServer((&api.Server{Policies: store}).Handler())
		b.StartTimer()

		start := time.Now()
		req, _ := http.NewRequest(http.MethodPut, srv.URL+"/v1/policies", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/yaml")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("import: %s", resp.Status)
		}
		imported := time.Since(start)

		b.StopTimer()
		start = time.Now()
		if _, err := policyapi.Parse([]byte(body)); err != nil {
			b.Fatal(err)
		}
		parsed := time.Since(start)
		b.ReportMetric(imported.Seconds(), "s/import-10k")
		b.ReportMetric(parsed.Seconds(), "s/parse-10k")
		b.Logf("import of 10,000 policies, enforced on this node: %.2fs; baseline, parsing them alone: %.2fs", imported.Seconds(), parsed.Seconds())
		srv.Close()
		cancel()
		b.StartTimer()
	}
}
