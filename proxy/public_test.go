package proxy

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A public port needs no key; any other port route and the API do. The
// Authorization header reaches no sandbox on any route, public or not.
func TestPublicPorts(t *testing.T) {
	p, front := testProxy(t, &Config{
		APIKeys:   map[string]string{"k": "n"},
		Sandboxes: map[string]SandboxConfig{"sbx": {Token: tok, PublicPorts: []int{3000}}},
	})
	linkSandbox(t, p, "sbx", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "auth="+r.Header.Get("Authorization"))
	}))
	for _, c := range []struct {
		host, auth string
		want       int
	}{
		{"3000-sbx.local", "", 200},
		{"3000-sbx.sandbox.localhost:8080", "", 200},
		{"3000-sbx.local", "Bearer k", 200},
		{"3000-sbx.local", "Bearer wrong", 200}, // not checked, and stripped
		{"3000-sbx.local", "Basic dTpw", 200},
		{"3001-sbx.local", "", 401},
		{"3001-sbx.local", "Bearer k", 200},
		{"sbx.local", "", 401},
		{"3000-other.local", "", 401}, // public ports are per sandbox
	} {
		req, _ := http.NewRequest("GET", front.URL+"/", nil)
		req.Host = c.host
		if c.auth != "" {
			req.Header.Set("Authorization", c.auth)
		}
		resp, err := front.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.want || (c.want == 200 && string(body) != "auth=") {
			t.Errorf("%s %q: %d %s; want %d and no Authorization inside", c.host, c.auth, resp.StatusCode, body, c.want)
		}
	}
}

// RFC 7235: the auth scheme is case-insensitive.
func TestBearerScheme(t *testing.T) {
	for auth, want := range map[string]string{
		"Bearer k": "k", "bearer k": "k", "BEARER k": "k", "bEaReR  k": "k",
		"Bearer": "", "Bearer ": "", "Basic k": "", "Bearerk": "", "": "",
	} {
		got, ok := bearerKey(auth)
		if got != want || ok != (want != "") {
			t.Errorf("%q: %q %v, want %q", auth, got, ok, want)
		}
	}
}

// public_ports is checked at load: the error names the sandbox and the
// field, and no Go type.
func TestPublicPortsConfig(t *testing.T) {
	for ports, want := range map[string]string{
		`[0]`:          "sandbox sbx-1: public_ports: port 0 out of range 1..65535",
		`[65536]`:      "sandbox sbx-1: public_ports: port 65536 out of range 1..65535",
		`[8080, 8080]`: "sandbox sbx-1: public_ports: port 8080 listed twice",
		`"8080"`:       `sandbox sbx-1: "public_ports": expected an array, got a string`,
		`[80.5]`:       `sandbox sbx-1: "public_ports": expected an integer, got number 80.5`,
	} {
		path := filepath.Join(t.TempDir(), "proxy.json")
		data := `{"api_keys": {"k": "n"}, "sandboxes": {"sbx-1": {"token": "` + tok + `", "public_ports": ` + ports + `}}}`
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := LoadConfig(path)
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "Go ") {
			t.Errorf("public_ports %s: %v; want %q", ports, err, want)
		}
	}
	var c Config
	data := `{"api_keys": {"k": "n"}, "sandboxes": {"sbx-1": {"token": "` + tok + `", "public_ports": [3000, 8080]}}}`
	if err := json.Unmarshal([]byte(data), &c); err != nil || c.Validate() != nil || !c.isPublic("sbx-1", 8080) || c.isPublic("sbx-1", 22) {
		t.Fatalf("good public_ports: %+v %v", c.Sandboxes, err)
	}
}

// The proxy's own route answers a wrong method with 405 and Allow, and
// does not forward it to a sandbox.
func TestProxyRouteMethod(t *testing.T) {
	_, front := testProxy(t, &Config{APIKeys: map[string]string{"k": "n"}})
	req, _ := http.NewRequest("POST", front.URL+"/_proxy/sandboxes", nil)
	req.Header.Set("Authorization", "Bearer k")
	resp, err := front.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "GET, HEAD" || !strings.Contains(string(body), "METHOD_NOT_ALLOWED") {
		t.Fatalf("POST /_proxy/sandboxes: %d Allow %q %s", resp.StatusCode, resp.Header.Get("Allow"), body)
	}
}
