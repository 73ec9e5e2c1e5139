package web

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/filament-net/filament/clustermesh/relay"
	"github.com/filament-net/filament/clustermesh/relay/web/webtest"
)

// jsString quotes s for a JavaScript expression.
func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// The page in a real browser (headless Chromium): the map shows both
// clusters' workloads in their cluster and namespace boxes and the
// dropped edge in red, the table shows the flows, filters them by
// verdict, follows new ones live; the hostile strings of the flows show
// as text and no script of theirs runs; the page breaks none of its
// Content-Security-Policy. With FILAMENT_SCREENSHOT_DIR set, a full-page
// screenshot is saved there (web-page.png).
func TestPageInBrowser(t *testing.T) {
	path := webtest.LookChromium(t)
	m := newTestMesh(t)
	m.record(time.Now().Add(-time.Minute))
	// Served as filament-relay serves it: behind LoopbackHosts, whose
	// cross-site checks the page's own requests must pass.
	srv := httptest.NewServer(relay.LoopbackHosts(Handler(Config{Observer: m.client, Status: func(context.Context) (any, error) {
		return map[string]any{"clusters": []map[string]any{
			{"name": "c1", "nodes": 1, "synced": true}, {"name": "c2", "nodes": 1, "synced": true}}}, nil
	}})))
	defer srv.Close() // after the browser is gone: a live stream ends with it

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	ctx, closeBrowser := webtest.Browser(ctx, path, 1400, 1000)
	defer closeBrowser()

	// Every CSP violation of the page is counted before its own scripts run.
	watch := chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := cdp.Call(ctx, t, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{
			Source: `window.__violations = []; document.addEventListener('securitypolicyviolation', e => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));`,
		})
		return err
	})
	if err := chromedp.Do(ctx, watch, chromedp.Navigate(srv.URL)); err != nil {
		t.Fatalf("browser: %v", err)
	}
	poll := func(what, expr string) {
		t.Helper()
		if _, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(20*time.Second))); err != nil {
			state, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById('map-info').textContent + ' | ' +
				document.getElementById('flows-info').textContent + ' | ' + [...document.querySelectorAll('#flows tbody tr')].map(r => r.textContent).join(' / ')`))
			t.Fatalf("%s: %v (page: %s)", what, err, state)
		}
	}

	// The map: each workload in its cluster's box and its namespace's.
	want := map[string]string{"frontend": "c1/shop", "cart": "c1/shop", "coredns": "c1/kube-system", "world": "c1/",
		hostileApp: "c1/default", "payments": "c2/billing", "ledger": "c2/billing"}
	wantJSON, _ := json.Marshal(want)
	poll("the map's workloads", fmt.Sprintf(`(() => {
		const want = %s;
		const inside = (r, box) => r.x >= box.x && r.y >= box.y && r.x + r.width <= box.x + box.width && r.y + r.height <= box.y + box.height;
		const where = r => {
			const c = [...document.querySelectorAll('#map g.cluster')].find(c => inside(r, c.querySelector('.cluster-box').getBBox()));
			if (!c) return null;
			const ns = [...c.querySelectorAll('g.namespace')].find(n => inside(r, n.querySelector('.ns-box').getBBox()));
			return ns ? c.dataset.name + '/' + ns.dataset.name : null;
		};
		const got = {};
		for (const g of document.querySelectorAll('#map g.workload')) got[g.dataset.name] = where(g.querySelector('rect').getBBox());
		return Object.keys(want).every(k => got[k] === want[k]) && Object.keys(got).length === Object.keys(want).length;
	})()`, wantJSON))
	poll("a red dropped edge from frontend to payments", `(() => {
		const e = document.querySelector('#map path.edge[data-verdict="DROPPED"][data-source="frontend"][data-destination="payments"]');
		const green = document.querySelector('#map path.edge[data-verdict="FORWARDED"][data-source="frontend"][data-destination="cart"]');
		return !!e && getComputedStyle(e).stroke === 'rgb(208, 49, 45)' && !!green && getComputedStyle(green).stroke === 'rgb(31, 157, 85)' &&
			document.querySelectorAll('#map path.edge[data-verdict="DROPPED"]').length === 1 &&
			document.querySelector('#map text.edge-label') !== null;
	})()`)
	poll("the table's 10 flows and the status", `document.querySelectorAll('#flows tbody tr').length === 10 &&
		!document.getElementById('status-section').hidden && document.getElementById('status').textContent.includes('c2')`)

	// The hostile strings are text; no element or script of theirs exists.
	poll("hostile strings as text", fmt.Sprintf(`(() => {
		const cells = [...document.querySelectorAll('#flows td')].map(td => td.textContent);
		return cells.some(s => s.includes(%s)) && cells.some(s => s.includes(%s)) &&
			[...document.querySelectorAll('#map g.workload text')].some(x => x.textContent.startsWith(%s)) &&
			window.__pwned === undefined && document.querySelectorAll('img').length === 0 && document.scripts.length === 1;
	})()`, jsString(hostilePod), jsString(hostilePath), jsString(hostileApp[:20])))

	if dir := os.Getenv("FILAMENT_SCREENSHOT_DIR"); dir != "" {
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot: %v", err)
		}
		if err := os.WriteFile(filepath.Join(dir, "web-page.png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot: %s", filepath.Join(dir, "web-page.png"))
	}

	// Filtering by verdict refetches: the 2 drops.
	if err := chromedp.Do(ctx, chromedp.SetValue(chromedp.CSS("#f-verdict"), "DROPPED"), chromedp.Click(chromedp.CSS("#apply"))); err != nil {
		t.Fatal(err)
	}
	const rows = `[...document.querySelectorAll('#flows tbody tr')]`
	poll("the table filtered to DROPPED", rows+`.length === 2 && `+rows+`.every(r => r.querySelector('td.verdict').textContent.startsWith('DROPPED'))`)

	// Live: the drops held, then a new one as it comes.
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS("#f-live"))); err != nil {
		t.Fatal(err)
	}
	poll("the live table's backlog", `document.getElementById('flows-info').textContent === 'live' && `+rows+`.length === 2`)
	m.c1.Record(meshEvents(time.Now())[7].Event)
	poll("a new drop in the live table", rows+`.length === 3 && `+rows+`[0].querySelector('td.src').textContent.startsWith('c1: shop/frontend')`)

	violations, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`window.__violations`))
	if err != nil || len(violations) != 0 {
		t.Errorf("Content-Security-Policy violations: %v %v", violations, err)
	}
	if err := chromedp.Cancel(ctx); err != nil && !errors.Is(err, context.Canceled) {
		t.Logf("closing the browser: %v", err)
	}
}
