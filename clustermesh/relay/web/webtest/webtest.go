// Package webtest drives headless Chromium for the tests of the relay's
// web page (its own, and the lab's against a live relay).
package webtest

import (
	"context"
	"os"
	"os/exec"
	"testing"

	"github.com/chromedp/chromedp"
)

// Chromium is the browser the tests drive (Debian's package chromium,
// installed by make deps).
const Chromium = "chromium"

// LookChromium returns the browser's path, or skips t when there is none.
func LookChromium(t testing.TB) string {
	t.Helper()
	path, err := exec.LookPath(Chromium)
	if err != nil {
		t.Skipf("skipped: needs the %s browser (apt-get install chromium; make deps installs it): %v", Chromium, err)
	}
	return path
}

// Browser starts headless Chromium by running program (the browser, or a
// program that execs it with the arguments it is given; DevTools speaks
// over the pipes it inherits), its window width×height, and returns a
// context of its first tab and the func that closes it.
func Browser(ctx context.Context, program string, width, height int) (context.Context, context.CancelFunc) {
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(program), chromedp.WindowSize(width, height), chromedp.DisableGPU)
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium's sandbox refuses root
	}
	ctx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	ctx, cancelBrowser := chromedp.NewContext(ctx)
	return ctx, func() { cancelBrowser(); cancelAlloc() }
}
