package lab_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/filament-net/filament/clustermesh/relay/web/webtest"
	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// The policies: billing/db (c2) takes shop/frontend of c1 on 5432,
// shop/web (c1) takes shop/frontend on 80; nothing else.
const (
	relayWebDBPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db, namespace: billing}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend, io.cilium.k8s.policy.cluster: c1, k8s:io.kubernetes.pod.namespace: shop}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
`
	relayWebWebPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`
)

// netnsBrowser writes a script that starts the browser in the network
// namespace ns: chromedp runs it as the browser and speaks DevTools over
// the pipes it inherits (no port, so nothing to dial in the namespace).
func netnsBrowser(t *testing.T, ns, browser string) string {
	t.Helper()
	script := filepath.Join(t.TempDir(), "browser-in-netns")
	body := fmt.Sprintf("#!/bin/sh\nexec ip netns exec %s %s \"$@\"\n", ns, browser)
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return script
}

// The relay's web page of a live two-cluster lab, in headless Chromium
// running in the relay node's namespace (the page is on that namespace's
// loopback): the map shows both clusters' workloads in their cluster and
// namespace boxes, the allowed cross-cluster connection as a forwarded
// edge and the denied one as a red dropped edge (and c1's own); the flow table has rows
// and its verdict filter narrows them to drops; the status lists both
// nodes. With FILAMENT_SCREENSHOT_DIR set, screenshots are saved there
// (relay-map.png, relay-flows.png).
func TestRelayWebPage(t *testing.T) {
	browser := webtest.LookChromium(t)
	l := labtest.UpClusters(t, 2, 1, "tunnel")
	pod := func(node, ns, name string) *lab.Pod {
		t.Helper()
		p, err := l.AddPodInNamespace(node, name, ns, []string{"app=" + name})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	frontend := pod("c1/n1", "shop", "frontend")
	intruder := pod("c1/n1", "shop", "intruder")
	web := pod("c1/n1", "shop", "web")
	db := pod("c2/n1", "billing", "db")
	connectAndWait(t, l, "c1/n1", "c2", "c1/n1", "c2/n1")
	serve(t, lab.NetNSPath(db.NetNS), 5432)
	serve(t, lab.NetNSPath(web.NetNS), 80)
	labtest.ImportPolicy(t, l, "c2/n1", relayWebDBPolicy)
	labtest.ImportPolicy(t, l, "c1/n1", relayWebWebPolicy)
	eventually(t, "shop/frontend (c1) reaches billing/db (c2) and shop/web", func() bool {
		return reach(t, lab.NetNSPath(frontend.NetNS), "tcp", db.IP, 5432) && reach(t, lab.NetNSPath(frontend.NetNS), "tcp", web.IP, 80)
	})
	if reach(t, lab.NetNSPath(intruder.NetNS), "tcp", db.IP, 5432) {
		t.Fatal("shop/intruder reached billing/db")
	}
	if reach(t, lab.NetNSPath(intruder.NetNS), "tcp", web.IP, 80) {
		t.Fatal("shop/intruder reached shop/web")
	}

	r := startRelay(t, l, "c1")

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ctx, closeBrowser := webtest.Browser(ctx, netnsBrowser(t, r.NetNS, browser), 1280, 900)
	defer closeBrowser()
	page := "http://" + r.Web + "/"
	if err := chromedp.Do(ctx, chromedp.Navigate(page)); err != nil {
		t.Fatalf("browser at %s: %v", page, err)
	}
	poll := func(what, expr string) {
		t.Helper()
		if _, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(30*time.Second))); err != nil {
			state, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById('map-info').textContent + ' | ' +
				[...document.querySelectorAll('#map g.workload')].map(g => g.dataset.name).join(', ') + ' | ' +
				[...document.querySelectorAll('#map path.edge')].map(e => e.dataset.source + '>' + e.dataset.destination + ':' + e.dataset.verdict).join(', ') + ' | ' +
				document.getElementById('flows-info').textContent + ' | ' + document.getElementById('status').textContent.slice(0, 500)`))
			t.Fatalf("%s: %v (page: %s)", what, err, state)
		}
	}
	// refresh reloads the map and the status (the page loads them once).
	refresh := func() error { return chromedp.Do(ctx, chromedp.Click(chromedp.CSS("#map-refresh"))) }

	// The map: each workload in its cluster's box and its namespace's.
	const where = `(name => {
		const inside = (r, box) => r.x >= box.x && r.y >= box.y && r.x + r.width <= box.x + box.width && r.y + r.height <= box.y + box.height;
		const g = document.querySelector('#map g.workload[data-name="' + name + '"]');
		if (!g) return null;
		const r = g.querySelector('rect').getBBox();
		const c = [...document.querySelectorAll('#map g.cluster')].find(c => inside(r, c.querySelector('.cluster-box').getBBox()));
		if (!c) return null;
		const ns = [...c.querySelectorAll('g.namespace')].find(n => inside(r, n.querySelector('.ns-box').getBBox()));
		return ns ? c.dataset.name + '/' + ns.dataset.name : null;
	})`
	const edge = `((src, dst, verdict) => document.querySelector('#map path.edge[data-verdict="' + verdict + '"][data-source="' + src + '"][data-destination="' + dst + '"]'))`
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`(() => {
			const where = `+where+`, edge = `+edge+`;
			const drop = edge('intruder', 'db', 'DROPPED'), allowed = edge('frontend', 'db', 'FORWARDED');
			return where('frontend') === 'c1/shop' && where('intruder') === 'c1/shop' && where('db') === 'c2/billing' && where('web') === 'c1/shop' &&
				!!edge('intruder', 'web', 'DROPPED') && !!edge('frontend', 'web', 'FORWARDED') &&
				!!drop && getComputedStyle(drop).stroke === 'rgb(208, 49, 45)' && !!allowed && !edge('frontend', 'db', 'DROPPED') &&
				document.getElementById('status').textContent.includes('c1/n1') && document.getElementById('status').textContent.includes('c2/n1');
		})()`))
		if err == nil && ok {
			break
		}
		if err == nil && time.Now().Before(deadline) {
			// Flows and nodes arrive as the relay connects: ask again.
			if err = refresh(); err == nil {
				time.Sleep(time.Second)
				continue
			}
		}
		poll("the map: frontend and intruder in c1/shop, db in c2/billing, intruder → db dropped (red), frontend → db forwarded; the status: both nodes", "false")
	}
	rows := `[...document.querySelectorAll('#flows tbody tr')]`
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS("#apply"))); err != nil {
		t.Fatal(err)
	}
	poll("flow rows, some not dropped", rows+`.length > 0 && `+rows+`.some(r => !r.querySelector('td.verdict').textContent.startsWith('DROPPED'))`)
	if dir := os.Getenv("FILAMENT_SCREENSHOT_DIR"); dir != "" {
		shoot(ctx, t, filepath.Join(dir, "relay-map.png"), chromedp.CaptureScreenshot())
		shoot(ctx, t, filepath.Join(dir, "relay-flows.png"), chromedp.Screenshot(chromedp.CSS("#flows-section")))
	}

	// Filtering by verdict: only drops, among them intruder's to db.
	if err := chromedp.Do(ctx, chromedp.SetValue(chromedp.CSS("#f-verdict"), "DROPPED"), chromedp.Click(chromedp.CSS("#apply"))); err != nil {
		t.Fatal(err)
	}
	poll("the table filtered to DROPPED", rows+`.length > 0 && `+rows+`.every(r => r.querySelector('td.verdict').textContent.startsWith('DROPPED')) && `+
		rows+`.some(r => r.querySelector('td.src').textContent.includes('shop/intruder') && r.querySelector('td.dst').textContent.includes('billing/db'))`)
	if err := chromedp.Cancel(ctx); err != nil && !errors.Is(err, context.Canceled) {
		t.Logf("closing the browser: %v", err)
	}
}

// shoot saves a screenshot (PNG) the action takes.
func shoot(ctx context.Context, t *testing.T, path string, a chromedp.Action[[]byte]) {
	t.Helper()
	png, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("screenshot %s: %v", path, err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
}
