package integration

// A headless Chromium driven over the DevTools protocol (chromedp), for
// the web terminal's tests. Debian's chromium package; chromedp needs no
// download of its own browser (docs/proxy.md says why chromedp).

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// Browser is one headless Chromium with one tab.
type Browser struct {
	t   *testing.T
	Ctx context.Context

	mu     sync.Mutex
	errors []string // the pages' console errors and uncaught exceptions
}

// chromiumPath is Debian's Chromium, or "" when it is not installed.
func chromiumPath() string {
	for _, p := range []string{"/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	return ""
}

// StartBrowser starts Chromium (headless, a fresh profile) at width x
// height, or skips t when it is not installed. It is closed at the end
// of t.
func StartBrowser(t *testing.T, width, height int) *Browser {
	t.Helper()
	path := chromiumPath()
	if path == "" {
		t.Skip("needs Debian's chromium (scripts/deps.sh installs it)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox, // root in CI: Chromium refuses its sandbox as root
		chromedp.DisableGPU,
		chromedp.WindowSize(width, height),
		chromedp.UserDataDir(t.TempDir()),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx)
	b := &Browser{t: t, Ctx: ctx}
	if err := chromedp.Do(ctx); err != nil {
		cancelTab()
		cancelAlloc()
		t.Fatalf("start chromium: %v", err)
	}
	t.Cleanup(func() { cancelTab(); cancelAlloc() })
	err := chromedp.Listen(ctx, func(ev any) {
		switch e := ev.(type) {
		case *runtime.EventExceptionThrown:
			d := e.ExceptionDetails
			msg := d.Text
			if d.Exception != nil {
				msg += " " + d.Exception.Description
			}
			b.addError(fmt.Sprintf("exception at %s:%d: %s", d.URL, d.LineNumber, msg))
		case *runtime.EventConsoleAPICalled:
			if e.Type == runtime.ConsoleAPICalledTypeError {
				var parts []string
				for _, a := range e.Args {
					parts = append(parts, string(a.Value)+a.Description)
				}
				b.addError("console.error: " + strings.Join(parts, " "))
			}
		}
	})
	if err != nil {
		t.Fatalf("listen to chromium: %v", err)
	}
	return b
}

func (b *Browser) addError(s string) {
	b.mu.Lock()
	b.errors = append(b.errors, s)
	b.mu.Unlock()
}

// Errors are the console errors and exceptions seen so far.
func (b *Browser) Errors() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.errors...)
}

// Do runs actions within d.
func (b *Browser) Do(d time.Duration, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.Ctx, d)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.t.Fatalf("browser: %v (page errors: %v)", err, b.Errors())
	}
}

// tryEval evaluates a JavaScript expression (a promise is awaited).
func tryEval[T any](b *Browser, expr string) (T, error) {
	ctx, cancel := context.WithTimeout(b.Ctx, 30*time.Second)
	defer cancel()
	return chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
}

// eval is tryEval that fails the test on an error.
func eval[T any](b *Browser, expr string) T {
	b.t.Helper()
	v, err := tryEval[T](b, expr)
	if err != nil {
		b.t.Fatalf("evaluate %s: %v (page errors: %v)", expr, err, b.Errors())
	}
	return v
}

// WaitFor evaluates expr every 100 ms until it returns true, for at most
// d, and fails t with what last returned otherwise.
func (b *Browser) WaitFor(d time.Duration, what, expr string, dump string) {
	b.t.Helper()
	for i := 0; i < int(d/(100*time.Millisecond)); i++ {
		if ok, err := tryEval[bool](b, expr); err == nil && ok {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	last := ""
	if dump != "" {
		last, _ = tryEval[string](b, dump)
	}
	b.t.Fatalf("waited %v for %s; page: %s; errors: %v", d, what, last, b.Errors())
}

// Screenshot saves the page as a PNG under dir and logs where.
func (b *Browser) Screenshot(dir, name string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.Ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot: %v", err)
	}
	path := fmt.Sprintf("%s/%s.png", dir, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Fatalf("screenshot: %v", err)
	}
	b.t.Logf("screenshot: %s", path)
	return path
}
