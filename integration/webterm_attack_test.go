package integration

// The cross-sandbox attack on the browser login (issue 19): a page served
// by sandbox A's own port route, in the victim's browser, sends requests
// with the victim's cookie to sandbox B's API and opens a WebSocket to B's
// shell. Every *.sandbox.localhost host is one site, so SameSite=Strict
// lets the cookie go; the proxy's Origin rule must refuse it.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// attackServer serves the attacker's page (argv 2) at / and echoes the
// request's headers at /echo.
const attackServer = "import http.server,sys,json\n" +
	"page=sys.argv[2].encode()\n" +
	"class H(http.server.BaseHTTPRequestHandler):\n" +
	"  def do_GET(self):\n" +
	"    if self.path=='/echo':\n" +
	"      b=json.dumps([[k.lower(),v] for k,v in self.headers.items()]).encode(); t='application/json'\n" +
	"    else:\n" +
	"      b=page; t='text/html'\n" +
	"    self.send_response(200); self.send_header('Content-Type',t)\n" +
	"    self.send_header('Content-Length',str(len(b))); self.end_headers(); self.wfile.write(b)\n" +
	"  def log_message(self,*a): pass\n" +
	"http.server.ThreadingHTTPServer(('127.0.0.1',int(sys.argv[1])),H).serve_forever()\n"

// attackPage is the attacker's script: a form-like POST (no preflight) to
// B's API that would start a process, a WebSocket to B's PTY session
// (whose id and token it is given: the worst case), and what its own
// server and document.cookie see. window.result is the report.
const attackPage = `<!doctype html><script>
window.result = (async () => {
  const r = {};
  try {
    await fetch(%q + '/api/v1/processes', {method: 'POST', mode: 'no-cors', credentials: 'include',
      headers: {'Content-Type': 'text/plain'}, body: JSON.stringify({command: '/usr/bin/touch', args: ['/tmp/pwned-post']})});
    r.post = 'sent';
  } catch (e) { r.post = 'failed: ' + e; }
  r.ws = await new Promise((done) => {
    const w = new WebSocket(%q);
    w.binaryType = 'arraybuffer';
    w.onopen = () => { w.send(new Uint8Array([0, ...new TextEncoder().encode('touch /tmp/pwned-ws\r')])); done('open'); };
    w.onerror = () => done('refused');
    setTimeout(() => done('timeout'), 15000);
  });
  r.echo = await (await fetch('/echo')).text();
  r.cookie = document.cookie;
  return r;
})();
</script>`

// startPlainAgent connects sandbox id (already in the proxy's config with
// token) as a plain tl-agent process acting as root, for a second sandbox.
// The later --sandbox-id and --token-file override the harness's own.
func startPlainAgent(t *testing.T, s *System, id, token string) {
	t.Helper()
	tf := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tf, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	out := s.StartExtraAgent(t, []string{"--sandbox-id", id, "--token-file", tf, "--user", "root"})
	for i := 0; i < 200; i++ {
		resp := sandboxDo(t, s, id, "GET", "/api/v1/health", "")
		resp.Body.Close()
		if resp.StatusCode == 200 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("sandbox %s never connected: %s", id, out.String())
}

// sandboxDo sends a bearer request to sandbox id's API.
func sandboxDo(t *testing.T, s *System, id, method, path, body string) *http.Response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	req := s.Request(ctx, method, path, strings.NewReader(body))
	req.Host = id + ".local"
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return resp
}

// inSandboxB asks sandbox B's files API (with the key) whether path is there.
func inSandboxB(t *testing.T, s *System, path string) bool {
	t.Helper()
	resp := s.Do("GET", "/api/v1/files?path="+path, nil)
	defer resp.Body.Close()
	return resp.StatusCode == 200
}

// cookieRequest sends a request with the login cookie as a browser would,
// to host (through the proxy), from origin.
func cookieRequest(t *testing.T, s *System, method, host, path, origin, ctype, cookie, body string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, method, s.BaseURL()+path, strings.NewReader(body))
	req.Host = host
	req.Header.Set("Cookie", cookie)
	if origin != "" {
		req.Header.Set("Origin", origin)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	// A redirect (the logout's 303) is the answer, not followed.
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data)
}

// TestWebTerminalCrossSandboxRefused performs the attack in Chromium and
// by hand with the real cookie, and checks each rule with a control that
// the same request from the right origin does work.
func TestWebTerminalCrossSandboxRefused(t *testing.T) {
	RequireRoot(t)
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		t.Skip("needs /usr/bin/python3 for the attacker's server")
	}
	portA, tokenA := freePort(t), randHex(32)
	s := Start(t, Options{ProxyConfig: func(cfg map[string]any) {
		cfg["sandboxes"].(map[string]any)["sbx-a"] = map[string]any{"token": tokenA, "public_ports": []int{portA}}
	}})
	ensureUser(t, s)
	startPlainAgent(t, s, "sbx-a", tokenA)
	b := StartBrowser(t, 900, 600)
	port := proxyPort(s)
	hostB := s.SandboxID + ".sandbox.localhost:" + port
	originB := "http://" + hostB
	hostA := fmt.Sprintf("%d-sbx-a.sandbox.localhost:%s", portA, port)
	originA := "http://" + hostA

	// The victim logs in to B's terminal; its session is what A attacks.
	browserLogin(b, originB+"/terminal", s.APIKey)
	b.WaitFor(30*time.Second, "connected", statusJS+` === 'connected'`, statusJS)
	var pty struct{ ID, Token string }
	if err := json.Unmarshal([]byte(eval[string](b, `sessionStorage.getItem('tl-pty-session')`)), &pty); err != nil || pty.Token == "" {
		t.Fatalf("no PTY session in the page: %v", err)
	}
	wsURL := "ws://" + hostB + "/api/v1/pty/" + pty.ID + "/ws?token=" + pty.Token
	cookie := loginCookie(b, originB+"/")
	if cookie == nil {
		t.Fatal("no login cookie after the login")
	}
	jar := "a=1; " + cookie.Name + "=" + cookie.Value + "; b=2"

	resp := sandboxDo(t, s, "sbx-a", "POST", "/api/v1/processes", fmt.Sprintf(`{"command": "/usr/bin/python3", "args": ["-c", %q, "%d", %q]}`,
		attackServer, portA, fmt.Sprintf(attackPage, originB, wsURL)))
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("start the attacker's server: %d", resp.StatusCode)
	}

	browserRule(t, s, b, "a page on sandbox A's port route cannot use B's API or shell with the cookie", func(t *testing.T) {
		for i := 0; ; i++ {
			if st, _ := cookieRequest(t, s, "GET", hostA, "/echo", "", "", "", ""); st == 200 {
				break
			}
			if i == 100 {
				resp := sandboxDo(t, s, "sbx-a", "GET", "/api/v1/processes", "")
				out, _ := io.ReadAll(resp.Body)
				t.Fatalf("the attacker's server never answered: %s", out)
			}
			time.Sleep(100 * time.Millisecond)
		}
		b.Do(30*time.Second, chromedp.Navigate(originA+"/"))
		r := eval[map[string]string](b, `window.result`)
		if r["post"] != "sent" || r["ws"] != "refused" {
			t.Fatalf("attack: %v; page %s", r, eval[string](b, `document.documentElement.outerHTML.slice(0, 300) + typeof window.result`))
		}
		time.Sleep(500 * time.Millisecond) // a shell that got the input would have run it by now
		for _, f := range []string{"/tmp/pwned-post", "/tmp/pwned-ws"} {
			if inSandboxB(t, s, f) {
				t.Fatalf("%s exists: the attack went through", f)
			}
		}
		if strings.Contains(r["echo"], cookie.Value) || strings.Contains(r["cookie"], cookie.Value) {
			t.Fatalf("the login cookie reached sandbox A: %v", r)
		}
	})

	browserRule(t, s, b, "control: the same requests from B's own page work", func(t *testing.T) {
		b.Do(30*time.Second, chromedp.Navigate(originB+"/terminal"))
		b.WaitFor(30*time.Second, "connected", statusJS+` === 'connected'`, statusJS)
		got := eval[string](b, `(async () => {
		  const r = await fetch('/api/v1/processes', {method: 'POST', headers: {'Content-Type': 'application/json'},
		    body: JSON.stringify({command: '/usr/bin/touch', args: ['/tmp/control-post']})});
		  return String(r.status); })()`)
		if got != "201" {
			t.Fatalf("POST from B's page: %s", got)
		}
		typeLine(b, "touch /tmp/control-ws")
		for i := 0; i < 100 && !inSandboxB(t, s, "/tmp/control-ws"); i++ {
			time.Sleep(100 * time.Millisecond)
		}
		if !inSandboxB(t, s, "/tmp/control-post") || !inSandboxB(t, s, "/tmp/control-ws") {
			t.Fatal("the control requests did not run")
		}
	})

	rule(t, s, "the cookie rules, by hand with the real cookie", func(t *testing.T) {
		body := `{"command": "/bin/true"}`
		for _, c := range []struct {
			name, host, origin, ctype string
			want                      int
		}{
			{"from A's origin", hostB, originA, "application/json", 403},
			{"no Origin", hostB, "", "application/json", 403},
			{"a text/plain body", hostB, originB, "text/plain", 403},
			{"a form body", hostB, originB, "application/x-www-form-urlencoded", 403},
			{"B's own origin", hostB, originB, "application/json", 201},
			{"on the .local host (another origin)", s.SandboxID + ".local", originB, "application/json", 401},
		} {
			if st, out := cookieRequest(t, s, "POST", c.host, "/api/v1/processes", c.origin, c.ctype, jar, body); st != c.want {
				t.Errorf("%s: %d %s, want %d", c.name, st, out, c.want)
			}
		}
		// A file read with the cookie is a download, never a page.
		for site, want := range map[string]int{"same-origin": 200, "same-site": 403} {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			req, _ := http.NewRequestWithContext(ctx, "GET", s.BaseURL()+"/api/v1/files?path=/tmp/control-post", nil)
			req.Host = hostB
			req.Header.Set("Cookie", jar)
			req.Header.Set("Sec-Fetch-Site", site)
			resp, err := http.DefaultClient.Do(req)
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != want {
				t.Errorf("GET a file with the cookie, Sec-Fetch-Site %s: %d, want %d", site, resp.StatusCode, want)
			}
			if want == 200 && (!strings.HasPrefix(resp.Header.Get("Content-Disposition"), "attachment") || resp.Header.Get("X-Content-Type-Options") != "nosniff") {
				t.Errorf("a file read with the cookie: %v", resp.Header)
			}
		}
		// A port route neither accepts nor passes on the cookie.
		_, out := cookieRequest(t, s, "GET", hostA, "/echo", originA, "", jar, "")
		var headers [][2]string
		_ = json.Unmarshal([]byte(out), &headers)
		seen := ""
		for _, h := range headers {
			if h[0] == "cookie" {
				seen = h[1]
			}
		}
		if seen != "a=1; b=2" {
			t.Errorf("sandbox A's server saw Cookie %q, want the other cookies only", seen)
		}
	})

	rule(t, s, "logout ends the login", func(t *testing.T) {
		if st, out := cookieRequest(t, s, "POST", hostB, "/_proxy/logout", originA, "", jar, ""); st != 403 {
			t.Fatalf("logout from A's origin: %d %s", st, out)
		}
		if st, _ := cookieRequest(t, s, "POST", hostB, "/_proxy/logout", originB, "", jar, ""); st != 303 {
			t.Fatalf("logout: %d", st)
		}
		if st, out := cookieRequest(t, s, "POST", hostB, "/api/v1/processes", originB, "application/json", jar, `{"command": "/bin/true"}`); st != 401 {
			t.Fatalf("after logout: %d %s", st, out)
		}
	})
}
