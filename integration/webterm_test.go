package integration

// The web terminal (issue 19, item 1) in Debian's headless Chromium
// against the real tl-proxy and agent: browser login, a shell in the page,
// resize, reload with replay, the exit code; the root page's list.

import (
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
)

// bufferJS is the text of the page's terminal, scrollback included.
const bufferJS = `(() => { const b = tlTerm.buffer.active, out = [];
  for (let i = 0; i < b.length; i++) out.push(b.getLine(i).translateToString(true));
  return out.join('\n'); })()`

const statusJS = `document.getElementById('status')?.textContent`

// shown is JavaScript: whether the element with id is there and shown.
func shown(id string) string {
	return `(() => { const e = document.getElementById('` + id + `'); return !!e && !e.hidden; })()`
}

// proxyPort is the port of the proxy's HTTP door.
func proxyPort(s *System) string {
	return s.HTTPAddr[strings.LastIndexByte(s.HTTPAddr, ':')+1:]
}

// browserLogin opens url, which shows the login form to a browser without
// a login, and logs in with key.
func browserLogin(b *Browser, url, key string) {
	b.t.Helper()
	b.Do(30*time.Second, chromedp.Navigate(url))
	b.WaitFor(20*time.Second, "the login form", shown("login"), `document.body.innerText`)
	b.Do(30*time.Second,
		chromedp.SendKeys(chromedp.CSS(`#login input[name=key]`), key),
		chromedp.Submit(chromedp.CSS(`#login`)),
	)
}

// typeLine types line and Enter into the page's terminal: the text as
// inserted text (a key event per character would reach xterm.js twice,
// as keydown and keypress), Enter as the key.
func typeLine(b *Browser, line string) {
	b.t.Helper()
	b.Do(30*time.Second, chromedp.Focus(chromedp.CSS(`.xterm-helper-textarea`)))
	ctx, cancel := context.WithTimeout(b.Ctx, 30*time.Second)
	defer cancel()
	if _, err := chromedp.Call(ctx, input.InsertText, input.InsertTextParams{Text: line}); err != nil {
		b.t.Fatalf("type %q: %v", line, err)
	}
	for _, typ := range []input.DispatchKeyEventType{input.DispatchKeyEventTypeRawKeyDown, input.DispatchKeyEventTypeKeyUp} {
		if _, err := chromedp.Call(ctx, input.DispatchKeyEvent, input.DispatchKeyEventParams{
			Type: typ, Key: "Enter", Code: "Enter", WindowsVirtualKeyCode: 13, NativeVirtualKeyCode: 13,
		}); err != nil {
			b.t.Fatalf("Enter: %v", err)
		}
	}
}

// waitBuffer waits until the terminal's text matches re and returns the
// first submatch.
func waitBuffer(b *Browser, what string, re *regexp.Regexp) string {
	b.t.Helper()
	for i := 0; i < 200; i++ {
		text, _ := tryEval[string](b, bufferJS)
		if m := re.FindStringSubmatch(text); m != nil {
			return m[len(m)-1]
		}
		time.Sleep(100 * time.Millisecond)
	}
	text := eval[string](b, bufferJS)
	b.t.Fatalf("waited for %s (%s); terminal:\n%s\npage errors: %v", what, re, text, b.Errors())
	return ""
}

// loginCookie is the browser's login cookie for url (HttpOnly cookies
// included), or nil.
func loginCookie(b *Browser, url string) *network.Cookie {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.Ctx, 10*time.Second)
	defer cancel()
	res, err := chromedp.Call(ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{url}})
	if err != nil {
		b.t.Fatalf("cookies: %v", err)
	}
	for _, c := range res.Cookies {
		if c.Name == "tl_proxy_session" {
			return c
		}
	}
	return nil
}

// wantOneSession checks the sandbox has the one PTY session (the page's).
func wantOneSession(t *testing.T, s *System, after string) {
	t.Helper()
	var list struct {
		Sessions []map[string]any `json:"sessions"`
	}
	s.JSON("GET", "/api/v1/pty", nil, 200, &list)
	if len(list.Sessions) != 1 {
		t.Fatalf("%d sessions after %s, want 1", len(list.Sessions), after)
	}
}

func artifactDir(t *testing.T) string {
	dir := os.Getenv("TL_TEST_ARTIFACTS")
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "tl-webterm-"); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// browserRule is rule with the browser's failures reported to the step.
func browserRule(t *testing.T, s *System, b *Browser, name string, f func(t *testing.T)) {
	t.Helper()
	rule(t, s, name, func(t *testing.T) {
		prev := b.t
		b.t = t
		defer func() { b.t = prev }()
		f(t)
	})
}

// TestWebTerminal: log in, get a shell, `echo $((6*7)); tput cols`, a
// window resize changes tput cols, a reload replays the earlier output in
// the same session, `exit 3` shows the exit code and offers a new shell;
// the root page lists the sandbox as connected. No console errors.
func TestWebTerminal(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{})
	ensureUser(t, s)
	b := StartBrowser(t, 1000, 700)
	port := proxyPort(s)
	host := s.SandboxID + ".sandbox.localhost:" + port
	shots := artifactDir(t)

	browserRule(t, s, b, "the root page lists the sandboxes after a login", func(t *testing.T) {
		browserLogin(b, "http://sandbox.localhost:"+port+"/", s.APIKey)
		b.WaitFor(20*time.Second, "the list", shown("sandboxes"), `document.body.innerText`)
		rows := eval[string](b, `document.querySelector('#sandboxes tbody').innerText`)
		if !regexp.MustCompile(s.SandboxID + `\s+yes`).MatchString(rows) {
			t.Fatalf("list: %q", rows)
		}
	})

	var cols1 string
	browserRule(t, s, b, "log in and the shell answers", func(t *testing.T) {
		browserLogin(b, "http://"+host+"/terminal", s.APIKey)
		b.WaitFor(30*time.Second, "connected", statusJS+` === 'connected'`, statusJS)
		typeLine(b, "echo $((6*7)); tput cols")
		cols1 = waitBuffer(b, "42 and the columns", regexp.MustCompile(`(?m)^42\s*\n(\d+)\s*$`))
		b.Screenshot(shots, "webterm-shell")
	})

	browserRule(t, s, b, "the login cookie is host-only, HttpOnly, SameSite=Strict", func(t *testing.T) {
		c := loginCookie(b, "http://"+host+"/")
		if c == nil || !c.HTTPOnly || c.SameSite != network.CookieSameSiteStrict || c.Domain != s.SandboxID+".sandbox.localhost" || c.Value == s.APIKey {
			t.Fatalf("cookie %+v", c)
		}
		if visible := eval[string](b, `document.cookie`); strings.Contains(visible, "tl_proxy_session") {
			t.Fatalf("document.cookie shows the login: %q", visible)
		}
	})

	browserRule(t, s, b, "a window resize changes tput cols", func(t *testing.T) {
		b.Do(10*time.Second, chromedp.EmulateViewport(600, 700))
		b.WaitFor(20*time.Second, "the terminal to fit the window", `tlTerm.cols !== `+cols1, `String(tlTerm.cols)`)
		typeLine(b, "echo cols-$(tput cols)")
		cols2 := waitBuffer(b, "the new columns", regexp.MustCompile(`(?m)^cols-(\d+)\s*$`))
		if cols2 == cols1 {
			t.Fatalf("tput cols %s before and after the resize", cols1)
		}
	})

	browserRule(t, s, b, "a reload reattaches to the same session and replays its output", func(t *testing.T) {
		before := eval[string](b, `sessionStorage.getItem('tl-pty-session')`)
		b.Do(30*time.Second, chromedp.Reload())
		b.WaitFor(30*time.Second, "connected", statusJS+` === 'connected'`, statusJS)
		waitBuffer(b, "the replayed 42", regexp.MustCompile(`(?m)^(42)\s*$`))
		after := eval[string](b, `sessionStorage.getItem('tl-pty-session')`)
		if before == "" || before != after {
			t.Fatalf("session %q before the reload, %q after", before, after)
		}
		wantOneSession(t, s, "the reload")
	})

	browserRule(t, s, b, "a dropped connection reattaches to the same session", func(t *testing.T) {
		typeLine(b, "echo before-$((1+1))")
		waitBuffer(b, "the marker", regexp.MustCompile(`(?m)^before-(2)\s*$`))
		// The page's socket closes as when the network drops (no close frame).
		eval[bool](b, `(() => { window.droppedWS = ws; ws.close(); return true; })()`)
		b.WaitFor(30*time.Second, "connected again on a new socket",
			`!!ws && ws !== window.droppedWS && ws.readyState === WebSocket.OPEN && `+statusJS+` === 'connected'`, statusJS)
		waitBuffer(b, "the replayed marker", regexp.MustCompile(`(?m)^before-(2)\s*$`))
		typeLine(b, "echo after-$((2+2))")
		waitBuffer(b, "an answer after the drop", regexp.MustCompile(`(?m)^after-(4)\s*$`))
		wantOneSession(t, s, "the drop")
	})

	browserRule(t, s, b, "exit 3 shows the exit code and offers a new shell", func(t *testing.T) {
		typeLine(b, "exit 3")
		b.WaitFor(30*time.Second, "the exit code", statusJS+` === 'exited with code 3'`, statusJS)
		waitBuffer(b, "the exit line", regexp.MustCompile(`\[the shell exited with code (3)\]`))
		b.Screenshot(shots, "webterm-exit")
		b.Do(10*time.Second, chromedp.Click(chromedp.CSS(`#new-shell`)))
		b.WaitFor(30*time.Second, "a new shell", statusJS+` === 'connected'`, statusJS)
		typeLine(b, "echo again-$((2+3))")
		waitBuffer(b, "the new shell's answer", regexp.MustCompile(`(?m)^again-(5)\s*$`))
	})

	browserRule(t, s, b, "the page's own JavaScript logged no error", func(t *testing.T) {
		if errs := b.Errors(); len(errs) > 0 {
			t.Fatalf("console errors: %v", errs)
		}
	})
}
