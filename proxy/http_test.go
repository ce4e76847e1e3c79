package proxy

import (
	"net/http/httptest"
	"testing"
)

func TestSelectRoute(t *testing.T) {
	p := mustNew(t, &Config{Domain: "sandbox.example", APIKeys: map[string]string{"k": "n"}})
	cases := []struct {
		host, header string
		want         route
		ok           bool
	}{
		{"abc.sandbox.example", "", route{sandbox: "abc"}, true},
		{"abc.sandbox.example:443", "", route{sandbox: "abc"}, true},
		{"ABC.local:8080", "", route{sandbox: "abc"}, true},
		{"8080-abc.local", "", route{sandbox: "abc", port: 8080}, true},
		{"8080-abc.sandbox.example", "", route{sandbox: "abc", port: 8080}, true},
		{"my-box.local", "", route{sandbox: "my-box"}, true},
		{"127.0.0.1:8080", "xyz", route{sandbox: "xyz"}, true},
		{"a.b.local", "", route{}, false},
		{"localhost:8080", "", route{}, false},
		{"99999-abc.local", "", route{}, false},
		{".local", "", route{}, false},
		{"127.0.0.1:8080", "ABC", route{}, false},
		{"127.0.0.1:8080", "a.port-22", route{}, false},
		{"a_b.local", "", route{sandbox: "a_b"}, true},
		{"abc.local.:80", "", route{sandbox: "abc"}, true},
		{"8080-.local", "", route{}, false},
		{"80-9-x.local", "", route{}, false},
	}
	for _, c := range cases {
		req := httptest.NewRequest("GET", "/", nil)
		req.Host = c.host
		if c.header != "" {
			req.Header.Set("X-Tensorlake-Sandbox-Id", c.header)
		}
		got, err := p.selectRoute(req)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("%q/%q: got %+v, %v; want %+v ok=%v", c.host, c.header, got, err, c.want, c.ok)
		}
	}
}

func TestRouteHostRoundTrip(t *testing.T) {
	for _, r := range []route{{sandbox: "a"}, {sandbox: "b-c", port: 22}} {
		got, ok := parseRouteHost(r.host() + ":80")
		if !ok || got != r {
			t.Errorf("%+v -> %q -> %+v %v", r, r.host(), got, ok)
		}
	}
	if _, ok := parseRouteHost("x.port-abc:80"); ok {
		t.Error("bad port accepted")
	}
}

func TestValidSandboxID(t *testing.T) {
	for id, want := range map[string]bool{"dev-sbx": true, "a_b": true, "": false, "8080-x": false, "a.b": false, "x y": false, "ABC": false, "aBc": false} {
		if ValidSandboxID(id) != want {
			t.Errorf("ValidSandboxID(%q) != %v", id, want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	bad := []Config{
		{},
		{APIKeys: map[string]string{"k": "n"}, Sandboxes: map[string]SandboxConfig{"x": {Token: "short"}}},
		{APIKeys: map[string]string{"k": "n"}, Sandboxes: map[string]SandboxConfig{"1-x": {Token: "0123456789abcdef"}}},
		{APIKeys: map[string]string{"k": "n"}, Sandboxes: map[string]SandboxConfig{"x": {Token: "0123456789abcdef", User: "-rf"}}},
		{APIKeys: map[string]string{"k": "n"}, Sandboxes: map[string]SandboxConfig{"x": {Token: "0123456789abcdef", User: "a b"}}},
		{APIKeys: map[string]string{"k": "n"}, OperatorKeys: map[string]string{"short": "prom"}},
		{APIKeys: map[string]string{"0123456789abcdef": "n"}, OperatorKeys: map[string]string{"0123456789abcdef": "prom"}},
	}
	for i, c := range bad {
		if c.Validate() == nil {
			t.Errorf("config %d validated", i)
		}
	}
	good := Config{APIKeys: map[string]string{"k": "n"}, Sandboxes: map[string]SandboxConfig{"x": {Token: "0123456789abcdef"}}}
	if err := good.Validate(); err != nil || good.Domain != DefaultDomain {
		t.Fatalf("good config: %v, domain %q", err, good.Domain)
	}
	if u := good.sandboxUser("x"); u != DefaultSandboxUser {
		t.Fatalf("a sandbox without a user: the port route logs in as %q, want %q", u, DefaultSandboxUser)
	}
	good.Sandboxes["x"] = SandboxConfig{Token: "0123456789abcdef", User: "tl-dev"}
	if err := good.Validate(); err != nil || good.sandboxUser("x") != "tl-dev" {
		t.Fatalf("a sandbox's user: %v, %q", err, good.sandboxUser("x"))
	}
}
