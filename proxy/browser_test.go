package proxy

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

// TestCookieRefusal: the rules for a request the login cookie
// authenticates, one row each.
func TestCookieRefusal(t *testing.T) {
	const own = "http://sbx-1.sandbox.localhost:8080"
	for _, c := range []struct {
		name, method, path, origin, site, ctype, body, upgrade string
		ok                                                     bool
	}{
		{name: "POST from the page", method: "POST", path: "/api/v1/pty", origin: own, ctype: "application/json", body: "{}", ok: true},
		{name: "JSON with a charset", method: "POST", path: "/api/v1/pty", origin: own, ctype: "application/json; charset=utf-8", body: "{}", ok: true},
		{name: "POST from a port route", method: "POST", path: "/api/v1/pty", origin: "http://3000-sbx-1.sandbox.localhost:8080", ctype: "application/json", body: "{}"},
		{name: "POST from another sandbox", method: "POST", path: "/api/v1/pty", origin: "http://sbx-2.sandbox.localhost:8080", ctype: "application/json", body: "{}"},
		{name: "another port of the proxy", method: "POST", path: "/api/v1/pty", origin: "http://sbx-1.sandbox.localhost:9090", ctype: "application/json", body: "{}"},
		{name: "https is another origin", method: "POST", path: "/api/v1/pty", origin: "https://sbx-1.sandbox.localhost:8080", ctype: "application/json", body: "{}"},
		{name: "Origin null", method: "POST", path: "/api/v1/pty", origin: "null", ctype: "application/json", body: "{}"},
		{name: "no Origin on a POST", method: "POST", path: "/api/v1/pty", ctype: "application/json", body: "{}"},
		{name: "no Origin, same-origin on a POST", method: "POST", path: "/api/v1/pty", site: "same-origin", ctype: "application/json", body: "{}"},
		{name: "text/plain body", method: "POST", path: "/api/v1/pty", origin: own, ctype: "text/plain", body: "{}"},
		{name: "form body", method: "POST", path: "/api/v1/pty", origin: own, ctype: "application/x-www-form-urlencoded", body: "a=b"},
		{name: "body without a type", method: "POST", path: "/api/v1/pty", origin: own, body: "{}"},
		{name: "body-less DELETE", method: "DELETE", path: "/api/v1/pty/x", origin: own, ok: true},
		{name: "file upload as octets", method: "PUT", path: "/api/v1/files", origin: own, ctype: "application/octet-stream", body: "x", ok: true},
		{name: "file upload as text", method: "PUT", path: "/api/v1/files", origin: own, ctype: "text/plain", body: "x"},
		{name: "GET from the page, same-origin", method: "GET", path: "/api/v1/pty/x", site: "same-origin", ok: true},
		{name: "GET with the own Origin", method: "GET", path: "/api/v1/pty/x", origin: own, ok: true},
		{name: "GET, same-site (a port route's img)", method: "GET", path: "/api/v1/files", site: "same-site"},
		{name: "GET, typed in the address bar", method: "GET", path: "/api/v1/files", site: "none"},
		{name: "GET with neither header", method: "GET", path: "/api/v1/files"},
		{name: "WebSocket from the page", method: "GET", path: "/api/v1/pty/x/ws", origin: own, site: "same-origin", upgrade: "websocket", ok: true},
		{name: "WebSocket from a port route", method: "GET", path: "/api/v1/pty/x/ws", origin: "http://3000-sbx-1.sandbox.localhost:8080", site: "same-site", upgrade: "websocket"},
		{name: "WebSocket without Origin", method: "GET", path: "/api/v1/pty/x/ws", site: "same-origin", upgrade: "websocket"},
		{name: "own Origin but cross-site fetch", method: "POST", path: "/api/v1/pty", origin: own, site: "cross-site", ctype: "application/json", body: "{}"},
	} {
		t.Run(c.name, func(t *testing.T) {
			req := httptest.NewRequest(c.method, own+c.path, strings.NewReader(c.body))
			for k, v := range map[string]string{"Origin": c.origin, "Sec-Fetch-Site": c.site, "Content-Type": c.ctype, "Upgrade": c.upgrade} {
				if v != "" {
					req.Header.Set(k, v)
				}
			}
			got := cookieRefusal(req, ownOrigin(req))
			if (got == "") != c.ok {
				t.Fatalf("refusal %q, want ok=%v", got, c.ok)
			}
		})
	}
}

// TestCookieRoute: where the cookie may authenticate at all.
func TestCookieRoute(t *testing.T) {
	p := &Proxy{cfg: &Config{Domain: "sandbox.localhost"}}
	for _, c := range []struct {
		host, path, header string
		ok                 bool
	}{
		{"sbx-1.sandbox.localhost:8080", "/api/v1/pty", "", true},
		{"sbx-1.sandbox.localhost:8080", "/api/v1", "", true},
		{"sbx-1.sandbox.localhost:8080", "/_proxy/sandboxes", "", true},
		{"sandbox.localhost:8080", "/_proxy/sandboxes", "", true},
		{"sbx-1.sandbox.localhost:8080", "/api/v10", "", false},
		{"sbx-1.sandbox.localhost:8080", "/other", "", false},
		{"3000-sbx-1.sandbox.localhost:8080", "/api/v1/pty", "", false},
		{"3000-sbx-1.local", "/api/v1/pty", "", false},
		{"sandbox.localhost:8080", "/api/v1/pty", "", false},
		{"127.0.0.1:8080", "/api/v1/pty", "sbx-1", false},
	} {
		req := httptest.NewRequest("GET", "http://"+c.host+c.path, nil)
		if c.header != "" {
			req.Header.Set("X-Tensorlake-Sandbox-Id", c.header)
		}
		r, err := p.selectRoute(req)
		if got := cookieRoute(req, r, err); got != c.ok {
			t.Errorf("%s%s (header %q): %v, want %v", c.host, c.path, c.header, got, c.ok)
		}
	}
}

// TestStripCookie: the login cookie goes, the sandbox's own stay.
func TestStripCookie(t *testing.T) {
	for in, want := range map[string]string{
		"tl_proxy_session=abc":                          "",
		"a=1; tl_proxy_session=abc; b=2":                "a=1; b=2",
		"tl_proxy_session=x;tl_proxy_session=y; keep=1": "keep=1",
		"tl_proxy_sessionx=1; xtl_proxy_session=2":      "tl_proxy_sessionx=1; xtl_proxy_session=2",
		"a=1": "a=1",
	} {
		h := http.Header{"Cookie": {in}}
		stripCookie(h, SessionCookie)
		if got := h.Get("Cookie"); got != want || (want == "" && len(h.Values("Cookie")) != 0) {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
	h := http.Header{"Cookie": {"a=1", "tl_proxy_session=z"}, "Authorization": {"Bearer k"}}
	stripCredentials(h)
	if h.Get("Authorization") != "" || strings.Join(h.Values("Cookie"), "|") != "a=1" {
		t.Errorf("two Cookie headers: %v", h)
	}
}

// TestBrowserSessions: the bound, the expiry and the origin binding.
func TestBrowserSessions(t *testing.T) {
	now := time.Unix(1000, 0)
	b := newBrowserSessions(3, time.Hour)
	b.now = func() time.Time { return now }
	first := b.create(browserSession{name: "a", origin: "http://x"})
	if _, ok := b.lookup(first, "http://x"); !ok {
		t.Fatal("a fresh login is not found")
	}
	if _, ok := b.lookup(first, "http://y"); ok {
		t.Fatal("a login is accepted on another origin")
	}
	now = now.Add(time.Minute)
	ids := []string{b.create(browserSession{origin: "http://x"}), b.create(browserSession{origin: "http://x"}), b.create(browserSession{origin: "http://x"})}
	if b.len() != 3 {
		t.Fatalf("%d logins past the bound of 3", b.len())
	}
	if _, ok := b.lookup(first, "http://x"); ok {
		t.Fatal("the oldest login was not the one to go at the bound")
	}
	now = now.Add(time.Hour)
	for _, id := range ids {
		if _, ok := b.lookup(id, "http://x"); ok {
			t.Fatal("a login outlived its TTL")
		}
	}
	if b.len() != 0 {
		t.Fatalf("%d expired logins kept", b.len())
	}
}

// TestLoginAndPages: the login form's rules and the page headers, through
// the proxy's handler (no sandbox needs to answer).
func TestLoginAndPages(t *testing.T) {
	cfg := &Config{APIKeys: map[string]string{"the-key": "alice", "bob-key": "bob"},
		APIKeyScopes: map[string][]string{"bob-key": {"sbx-2"}},
		Sandboxes:    map[string]SandboxConfig{"sbx-1": {Token: "0123456789abcdef"}}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	p, front := testProxy(t, cfg)
	host := "sbx-1.sandbox.localhost"
	login := func(origin, key string) *http.Response {
		req, _ := http.NewRequest("POST", front.URL+"/_proxy/login", strings.NewReader(url.Values{"key": {key}}.Encode()))
		req.Host = host
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	for _, c := range []struct {
		name, origin, key, location string
		status                      int
		cookie                      bool
	}{
		{"the right key from the page", "http://" + host, "the-key", "/terminal", 303, true},
		{"a wrong key", "http://" + host, "nope", "/terminal?login=failed", 303, false},
		{"a key scoped elsewhere", "http://" + host, "bob-key", "/terminal?login=failed", 303, false},
		{"from another origin", "http://3000-sbx-1.sandbox.localhost", "the-key", "", 403, false},
		{"without Origin", "", "the-key", "", 403, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := p.logins.len()
			resp := login(c.origin, c.key)
			if resp.StatusCode != c.status || resp.Header.Get("Location") != c.location {
				t.Fatalf("%d %q", resp.StatusCode, resp.Header.Get("Location"))
			}
			set := resp.Header.Get("Set-Cookie")
			if (set != "") != c.cookie || (p.logins.len() > before) != c.cookie {
				t.Fatalf("Set-Cookie %q, logins %d -> %d", set, before, p.logins.len())
			}
			if c.cookie {
				for _, want := range []string{SessionCookie + "=", "Path=/", "HttpOnly", "SameSite=Strict"} {
					if !strings.Contains(set, want) {
						t.Errorf("Set-Cookie %q lacks %s", set, want)
					}
				}
				if strings.Contains(set, "the-key") || strings.Contains(set, "Domain") || strings.Contains(set, "Secure") {
					t.Errorf("Set-Cookie %q: the key, a Domain, or Secure without TLS", set)
				}
			}
		})
	}
	for _, path := range []string{"/terminal", "/_proxy/webterm/terminal.js", "/_proxy/webterm/vendor/xterm.js"} {
		req, _ := http.NewRequest("GET", front.URL+path, nil)
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("X-Frame-Options") != "DENY" || !strings.Contains(resp.Header.Get("Content-Security-Policy"), "frame-ancestors 'none'") {
			t.Errorf("GET %s: %d %v", path, resp.StatusCode, resp.Header)
		}
	}
}
