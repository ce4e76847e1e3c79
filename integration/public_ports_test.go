package integration

// Public ports and the HTTP front door as browsers and curl use it (issue
// 15, items 5 and 6): a dev server inside the sandbox opened without a
// key, the API key never reaching it, the error text of malformed JSON, a
// wrong method and a lower-case bearer scheme. Real tl-proxy and agent,
// real curl.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// browserUA is what Chromium sends: a request as a browser makes it.
const browserUA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"

// echoHeaders is a dev server that answers every GET with the request's
// headers as a JSON list of [name, value] pairs.
const echoHeaders = "import http.server,sys,json\n" +
	"class H(http.server.BaseHTTPRequestHandler):\n" +
	"  def do_GET(self):\n" +
	"    b=json.dumps([[k.lower(),v] for k,v in self.headers.items()]).encode()\n" +
	"    self.send_response(200); self.send_header('Content-Type','application/json')\n" +
	"    self.send_header('Content-Length',str(len(b))); self.end_headers(); self.wfile.write(b)\n" +
	"  def log_message(self,*a): pass\n" +
	"http.server.ThreadingHTTPServer(('127.0.0.1',int(sys.argv[1])),H).serve_forever()\n"

// curlResult is one curl request's status, headers and body.
type curlResult struct {
	status int
	header string
	body   string
}

// curl runs Debian's curl with args and returns what it got.
func curl(t *testing.T, args ...string) curlResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	full := append([]string{"-sS", "--max-time", "20", "-D", filepath.Join(dir, "h"), "-o", filepath.Join(dir, "b"), "-w", "%{http_code}"}, args...)
	out, err := exec.CommandContext(ctx, "curl", full...).CombinedOutput()
	if err != nil {
		t.Fatalf("curl %v: %v: %s", args, err, out)
	}
	var r curlResult
	fmt.Sscan(string(out), &r.status)
	h, _ := os.ReadFile(filepath.Join(dir, "h"))
	b, _ := os.ReadFile(filepath.Join(dir, "b"))
	r.header, r.body = string(h), string(b)
	return r
}

// startEcho starts echoHeaders on port inside the sandbox through the API
// and waits until it answers through the port route.
func startEcho(t *testing.T, s *System, port int) {
	t.Helper()
	s.JSON("POST", "/api/v1/processes", map[string]any{
		"command": "/usr/bin/python3", "args": []string{"-c", echoHeaders, fmt.Sprint(port)},
	}, 201, nil)
	for i := 0; i < 200; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		resp, err := http.DefaultClient.Do(s.PortRequest(ctx, "GET", port, "/", nil))
		if err == nil {
			resp.Body.Close()
		}
		cancel()
		if err == nil && resp.StatusCode == 200 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("the echo server on port %d never answered", port)
}

// TestPublicPortFromBrowser: a port in the sandbox's public_ports opens
// from a browser-like request with no key, at
// <port>-<sandbox>.sandbox.localhost (curl resolves *.localhost itself);
// any other port still answers 401; the Authorization header never
// reaches the server inside on either.
func TestPublicPortFromBrowser(t *testing.T) {
	RequireRoot(t)
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		t.Skip("needs /usr/bin/python3 for a server inside the sandbox")
	}
	pub, priv := freePort(t), freePort(t)
	s := Start(t, Options{ProxyConfig: func(cfg map[string]any) {
		for _, sb := range cfg["sandboxes"].(map[string]any) {
			sb.(map[string]any)["public_ports"] = []int{pub}
		}
	}})
	ensureUser(t, s)
	startEcho(t, s, pub)
	startEcho(t, s, priv)
	_, httpPort, _ := strings.Cut(s.HTTPAddr, ":")
	url := func(port int) string {
		return fmt.Sprintf("http://%d-%s.sandbox.localhost:%s/", port, s.SandboxID, httpPort)
	}
	browser := []string{"-A", browserUA, "-H", "Accept: text/html,application/xhtml+xml,*/*;q=0.8"}
	for _, c := range []struct {
		name string
		port int
		auth string
		want int
	}{
		{"public port, no key", pub, "", 200},
		{"public port, the API key is stripped", pub, "Bearer " + s.APIKey, 200},
		{"public port, a wrong key is stripped", pub, "Bearer nope", 200},
		{"other port, no key", priv, "", 401},
		{"other port, the API key is stripped", priv, "authorization: bearer " + s.APIKey, 200},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{}, browser...)
			if c.auth != "" {
				h := c.auth
				if !strings.HasPrefix(h, "authorization:") {
					h = "Authorization: " + h
				}
				args = append(args, "-H", h)
			}
			r := curl(t, append(args, url(c.port))...)
			if r.status != c.want {
				t.Fatalf("%d %s; want %d", r.status, r.body, c.want)
			}
			if c.want == 401 {
				var e struct{ Code string }
				if json.Unmarshal([]byte(r.body), &e); e.Code != "UNAUTHORIZED" {
					t.Fatalf("401 body %s", r.body)
				}
				return
			}
			var headers [][2]string
			if err := json.Unmarshal([]byte(r.body), &headers); err != nil {
				t.Fatalf("not the echo server: %s", r.body)
			}
			ua := ""
			for _, h := range headers {
				if h[0] == "authorization" || h[0] == "x-tensorlake-sandbox-id" {
					t.Errorf("%s reached the sandbox: %q", h[0], h[1])
				}
				if h[0] == "user-agent" {
					ua = h[1]
				}
			}
			if ua != browserUA {
				t.Errorf("user-agent inside %q: not the request sent", ua)
			}
		})
	}
	t.Run("node reaches it with a lookup or a Host header", func(t *testing.T) {
		nodeCheck(t, fmt.Sprintf("%d-%s.sandbox.localhost", pub, s.SandboxID), httpPort)
	})
}

// nodeGet is what docs/proxy.md tells Node users: http.get resolves
// nothing under .localhost (glibc does not), so give it a lookup, or
// connect to 127.0.0.1 with the Host header. It prints each way's status
// or error code.
const nodeGet = `const http = require('http');
const [host, port] = process.argv.slice(1);
const lookup = (h, o, cb) => o && o.all ? cb(null, [{address: '127.0.0.1', family: 4}]) : cb(null, '127.0.0.1', 4);
const get = (opts) => new Promise(res => http.get(opts, r => { r.resume(); res('' + r.statusCode); }).on('error', e => res(e.code)));
(async () => {
  console.log('plain', await get({host, port, path: '/'}));
  console.log('lookup', await get({host, port, path: '/', lookup}));
  console.log('host-header', await get({host: '127.0.0.1', port, path: '/', headers: {host: host + ':' + port}}));
})();`

// nodeCheck runs nodeGet against a public port when node is installed.
func nodeCheck(t *testing.T, host, port string) {
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("needs node")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "node", "-e", nodeGet, host, port).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "lookup 200\nhost-header 200\n") {
		t.Fatalf("node: %v\n%s", err, out)
	}
	t.Logf("node without a lookup: %s", strings.SplitN(string(out), "\n", 2)[0])
}

// freePort is a free loopback TCP port number.
func freePort(t *testing.T) int {
	addr := freeAddr(t)
	var p int
	fmt.Sscan(addr[strings.LastIndexByte(addr, ':')+1:], &p)
	return p
}

// TestPublicPortsConfigRefused: a malformed public_ports stops tl-proxy at
// start (exit 2) with a message naming the sandbox and the field.
func TestPublicPortsConfigRefused(t *testing.T) {
	bin := Binaries(t)
	for ports, want := range map[string]string{
		`[0]`:          "sandbox sbx-1: public_ports: port 0 out of range 1..65535",
		`[8080, 8080]`: "sandbox sbx-1: public_ports: port 8080 listed twice",
		`"8080"`:       `sandbox sbx-1: "public_ports": expected an array, got a string`,
	} {
		dir := t.TempDir()
		cfg := filepath.Join(dir, "proxy.json")
		data := `{"api_keys": {"k": "n"}, "sandboxes": {"sbx-1": {"token": "0123456789abcdef", "public_ports": ` + ports + `}}}`
		if err := os.WriteFile(cfg, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		cmd := exec.CommandContext(ctx, filepath.Join(bin, "tl-proxy"), "--config", cfg, "--state-dir", dir,
			"--uplink-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--ssh-addr", "")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		_ = cmd.Run()
		cancel()
		if cmd.ProcessState.ExitCode() != 2 || !strings.Contains(out.String(), want) {
			t.Errorf("public_ports %s: exit %d: %s; want exit 2 with %q", ports, cmd.ProcessState.ExitCode(), out.String(), want)
		}
	}
}

// TestHTTPErrorText: what curl users see on mistakes, through the real
// proxy and agent: a wrong method is 405 with Allow, the bearer scheme is
// case-insensitive, malformed JSON and a wrong type name the JSON field
// and type (never a Go type, never a bare "unexpected EOF").
func TestHTTPErrorText(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{})
	base := s.BaseURL()
	api := []string{"-H", "Host: " + s.SandboxID + ".local", "-H", "Authorization: Bearer " + s.APIKey}
	wantErr := func(t *testing.T, r curlResult, status int, code, words string) {
		t.Helper()
		var e struct{ Error, Code string }
		if err := json.Unmarshal([]byte(r.body), &e); err != nil || r.status != status || e.Code != code || !strings.Contains(e.Error, words) {
			t.Fatalf("%d %s; want %d %s with %q", r.status, r.body, status, code, words)
		}
		for _, leak := range []string{"Go ", "struct", "unmarshal", "unexpected EOF"} {
			if strings.Contains(e.Error, leak) {
				t.Errorf("error %q names %q", e.Error, leak)
			}
		}
	}
	allow := func(t *testing.T, r curlResult, want string) {
		t.Helper()
		for _, l := range strings.Split(r.header, "\r\n") {
			if k, v, _ := strings.Cut(l, ":"); strings.EqualFold(k, "Allow") && strings.TrimSpace(v) == want {
				return
			}
		}
		t.Errorf("no Allow: %s in\n%s", want, r.header)
	}
	rule(t, s, "a wrong method on an API route is 405 with Allow", func(t *testing.T) {
		r := curl(t, append(api, "-X", "PUT", base+"/api/v1/processes")...)
		wantErr(t, r, 405, "METHOD_NOT_ALLOWED", "PUT is not allowed on /api/v1/processes")
		allow(t, r, "GET, HEAD, POST")
		r = curl(t, append(api, "-X", "POST", base+"/api/v1/health")...)
		wantErr(t, r, 405, "METHOD_NOT_ALLOWED", "allowed: GET, HEAD")
	})
	rule(t, s, "a wrong method on the proxy's own route is 405 with Allow", func(t *testing.T) {
		r := curl(t, "-X", "DELETE", "-H", "Authorization: Bearer "+s.APIKey, base+"/_proxy/sandboxes")
		wantErr(t, r, 405, "METHOD_NOT_ALLOWED", "DELETE is not allowed")
		allow(t, r, "GET, HEAD")
	})
	rule(t, s, "an unknown path is still 404", func(t *testing.T) {
		wantErr(t, curl(t, append(api, base+"/api/v1/nope")...), 404, "NOT_FOUND", "no route for GET /api/v1/nope")
	})
	rule(t, s, "the bearer scheme is case-insensitive", func(t *testing.T) {
		for _, scheme := range []string{"bearer", "BEARER", "Bearer"} {
			r := curl(t, "-H", "Host: "+s.SandboxID+".local", "-H", "authorization: "+scheme+" "+s.APIKey, base+"/api/v1/health")
			if r.status != 200 {
				t.Errorf("%s: %d %s", scheme, r.status, r.body)
			}
		}
		wantErr(t, curl(t, "-H", "Host: "+s.SandboxID+".local", "-H", "Authorization: Basic "+s.APIKey, base+"/api/v1/health"),
			401, "UNAUTHORIZED", "Bearer")
	})
	post := func(t *testing.T, path, body string) curlResult {
		return curl(t, append(api, "-H", "Content-Type: application/json", "--data-binary", body, base+path)...)
	}
	rule(t, s, "malformed JSON says so", func(t *testing.T) {
		for _, path := range []string{"/api/v1/processes", "/api/v1/processes/run", "/api/v1/pty"} {
			wantErr(t, post(t, path, `{"command": "ls"`), 400, "INVALID_REQUEST", "invalid JSON body: the JSON ends early")
		}
		wantErr(t, post(t, "/api/v1/processes", `{"command" "ls"}`), 400, "INVALID_REQUEST", "invalid JSON body: invalid character")
		wantErr(t, post(t, "/api/v1/processes", `{"command": "ls"} trailing`), 400, "INVALID_REQUEST", "invalid JSON body: more data after the JSON value")
	})
	rule(t, s, "a wrong type names the JSON field and type", func(t *testing.T) {
		wantErr(t, post(t, "/api/v1/processes/run", `{"command": "ls", "timeout": "5"}`), 400, "INVALID_REQUEST",
			`invalid JSON body: "timeout": expected a number, got a string`)
		wantErr(t, post(t, "/api/v1/processes", `{"command": "ls", "args": "-l"}`), 400, "INVALID_REQUEST",
			`invalid JSON body: "args": expected an array, got a string`)
		wantErr(t, post(t, "/api/v1/pty", `{"command": "bash", "rows": "24"}`), 400, "INVALID_REQUEST",
			`invalid JSON body: "rows": expected an integer, got a string`)
	})
}
