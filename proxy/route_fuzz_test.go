package proxy

import (
	"net/http/httptest"
	"strings"
	"testing"
)

// FuzzSelectRoute: whatever Host and X-Tensorlake-Sandbox-Id a client
// sends, routing never panics, only ever names a valid (lower-case) id and
// a port in range, and the route survives the trip through the
// transport's URL host (dialStream parses it back: a route that read back
// differently would reach another sandbox or port).
func FuzzSelectRoute(f *testing.F) {
	for _, s := range [][2]string{
		{"abc.sandbox.example", ""}, {"ABC.local:8080", ""}, {"8080-abc.local", ""},
		{"99999-abc.local", ""}, {"127.0.0.1:8080", "xyz"}, {"x", "a.port-22"},
		{"0-a.local", ""}, {"-1-a.local", ""}, {"a.b.local", ""}, {"[::1]:80", ""},
		{"8080-9-x.sandbox.example", ""}, {"x", "ABC"}, {".local", ""}, {"8080-.local", ""},
	} {
		f.Add(s[0], s[1])
	}
	p := mustNew(f, &Config{Domain: "sandbox.example", APIKeys: map[string]string{"k": "n"}})
	f.Fuzz(func(t *testing.T, host, header string) {
		req := httptest.NewRequest("GET", "/", nil)
		req.Host = host
		if header != "" {
			req.Header.Set("X-Tensorlake-Sandbox-Id", header)
		}
		r, err := p.selectRoute(req)
		if err != nil {
			return
		}
		if !ValidSandboxID(r.sandbox) || r.sandbox != strings.ToLower(r.sandbox) {
			t.Fatalf("host %q header %q: invalid id %q", host, header, r.sandbox)
		}
		if r.port < 0 || r.port > 65535 {
			t.Fatalf("host %q: port %d", host, r.port)
		}
		if h := req.Header.Get("X-Tensorlake-Sandbox-Id"); h != "" && (r.sandbox != h || r.port != 0) {
			t.Fatalf("header %q routed to %+v", h, r)
		}
		back, ok := parseRouteHost(r.host() + ":80")
		if !ok || back != r {
			t.Fatalf("route %+v -> %q -> %+v %v", r, r.host(), back, ok)
		}
	})
}
