package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/uplink"
)

// headerConn is an uplink stream as the test's agent end saw it.
type headerConn struct {
	net.Conn
	h uplink.Header
}

type connKey struct{}

// chanListener hands streams to an http.Server.
type chanListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}
func (l *chanListener) Close() error   { l.once.Do(func() { close(l.done) }); return nil }
func (l *chanListener) Addr() net.Addr { return &net.UnixAddr{Name: "test", Net: "unix"} }

// linkSandbox connects sandbox id of p to an in-process agent end that
// answers every API stream with handler. The agent end here is not the
// real agent: these tests look at what the proxy writes on its streams,
// which the agent does not report.
func linkSandbox(t *testing.T, p *Proxy, id string, handler http.Handler) {
	t.Helper()
	a, b := net.Pipe()
	cs, err := yamux.Client(a, yamux.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	ss, err := yamux.Server(b, yamux.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	ln := &chanListener{ch: make(chan net.Conn), done: make(chan struct{})}
	srv := &http.Server{Handler: handler, ConnContext: func(ctx context.Context, c net.Conn) context.Context {
		return context.WithValue(ctx, connKey{}, c.(*headerConn))
	}}
	go func() { _ = srv.Serve(ln) }()
	go func() {
		for {
			s, err := ss.AcceptStream()
			if err != nil {
				return
			}
			c := uplink.Wrap(s)
			h, err := uplink.ReadHeader(c)
			if err != nil {
				c.Close()
				continue
			}
			_ = uplink.WriteReply(c, uplink.StatusOK, "")
			select {
			case ln.ch <- &headerConn{Conn: c, h: h}:
			case <-ln.done:
				return
			}
		}
	}()
	if err := p.reg.registerV1(&Link{ID: id, Since: time.Now(), sess: cs}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close(); ln.Close(); cs.Close(); ss.Close() })
}

// mustNew is New for a config the test means to be valid.
func mustNew(t testing.TB, cfg *Config) *Proxy {
	t.Helper()
	p, err := New(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func testProxy(t *testing.T, cfg *Config) (*Proxy, *httptest.Server) {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	p := mustNew(t, cfg)
	front := httptest.NewServer(p.Handler())
	t.Cleanup(front.Close)
	return p, front
}

const tok = "0123456789abcdef"

func get(t *testing.T, front *httptest.Server, key, sandbox, path string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", front.URL+path, nil)
	req.Header.Set("Authorization", "Bearer "+key)
	if sandbox != "" {
		req.Host = sandbox + ".local"
	}
	resp, err := front.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestPooledStreamCarriesNoIdentity: streams are pooled per sandbox, so
// two API keys' requests interleave on one stream; no stream may name a
// user other than the one whose request it carries.
func TestPooledStreamCarriesNoIdentity(t *testing.T) {
	p, front := testProxy(t, &Config{
		APIKeys:   map[string]string{"key-alice": "alice", "key-bob": "bob"},
		Sandboxes: map[string]SandboxConfig{"sbx": {Token: tok}},
	})
	var mu sync.Mutex
	streams := map[*headerConn]bool{}
	var wrong []string
	linkSandbox(t, p, "sbx", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hc := r.Context().Value(connKey{}).(*headerConn)
		who := r.URL.Query().Get("who")
		mu.Lock()
		streams[hc] = true
		if hc.h.User != "" && hc.h.User != who {
			wrong = append(wrong, fmt.Sprintf("%s's request on a stream of %s", who, hc.h.User))
		}
		mu.Unlock()
	}))
	for i := 0; i < 20; i++ {
		key, who := "key-alice", "alice"
		if i%2 == 1 {
			key, who = "key-bob", "bob"
		}
		if code, body := get(t, front, key, "sbx", "/api/v1/health?who="+who); code != 200 {
			t.Fatalf("request %d: %d %s", i, code, body)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(streams) >= 20 {
		t.Fatalf("%d streams for 20 sequential requests: not pooled, the test proves nothing", len(streams))
	}
	if len(wrong) > 0 {
		t.Fatalf("%d requests carried another user's identity, e.g. %s", len(wrong), wrong[0])
	}
}

func TestAPIKeyScopes(t *testing.T) {
	var cfg Config
	data := `{"api_keys": {"key-all": "ops", "key-one": {"name": "bob", "sandboxes": ["sbx-a"]}, "key-star": {"name": "ci", "sandboxes": ["*"]}},
		"sandboxes": {"sbx-a": {"token": "` + tok + `"}, "sbx-b": {"token": "` + tok + `"}}}`
	if err := json.Unmarshal([]byte(data), &cfg); err != nil {
		t.Fatal(err)
	}
	p, front := testProxy(t, &cfg)
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "in") })
	linkSandbox(t, p, "sbx-a", ok)
	linkSandbox(t, p, "sbx-b", ok)
	for _, c := range []struct {
		key, sandbox string
		want         int
	}{
		{"key-all", "sbx-a", 200}, {"key-all", "sbx-b", 200},
		{"key-star", "sbx-b", 200},
		{"key-one", "sbx-a", 200}, {"key-one", "sbx-b", 403},
		{"key-one", "nope", 403}, // out of scope reads the same, known or not
		{"key-all", "nope", 404},
	} {
		if code, body := get(t, front, c.key, c.sandbox, "/api/v1/health"); code != c.want {
			t.Errorf("%s -> %s: %d %s, want %d", c.key, c.sandbox, code, body, c.want)
		}
	}
	// Port routes and the header form go through the same check.
	req, _ := http.NewRequest("GET", front.URL+"/", nil)
	req.Header.Set("Authorization", "Bearer key-one")
	req.Header.Set("X-Tensorlake-Sandbox-Id", "sbx-b")
	if resp, err := front.Client().Do(req); err != nil || resp.StatusCode != 403 {
		t.Errorf("header route to sbx-b with key-one: %v %v", resp.StatusCode, err)
	}
	if code, _ := get(t, front, "key-one", "8080-sbx-b", "/"); code != 403 {
		t.Errorf("port route to sbx-b with key-one: %d", code)
	}
	for key, want := range map[string]string{"key-one": "sbx-a", "key-all": "sbx-a,sbx-b", "key-star": "sbx-a,sbx-b"} {
		_, body := get(t, front, key, "", "/_proxy/sandboxes")
		var out struct{ Sandboxes []struct{ ID string } }
		_ = json.Unmarshal([]byte(body), &out)
		var ids []string
		for _, s := range out.Sandboxes {
			ids = append(ids, s.ID)
		}
		if strings.Join(ids, ",") != want {
			t.Errorf("%s lists %v, want %s", key, ids, want)
		}
	}
}

func TestConfigAPIKeyForms(t *testing.T) {
	bad := []string{
		`{"api_keys": {"k": {"name": "x"}}}`,                                       // sandboxes missing: not silently all
		`{"api_keys": {"k": {"name": "x", "sandbox": ["a"]}}}`,                     // typo fails closed
		`{"api_keys": {"k": 7}}`,                                                   // neither form
		`{"api_keys": {"k": {"name": "x", "sandboxes": ["A.b"]}}}`,                 // not an id
		`{"api_keys": {"k": "x"}, "sandboxes": {"ABC": {"token": "` + tok + `"}}}`, // upper case id
	}
	for _, b := range bad {
		var c Config
		err := json.Unmarshal([]byte(b), &c)
		if err == nil {
			err = c.Validate()
		}
		if err == nil {
			t.Errorf("accepted %s", b)
		} else if strings.Contains(err.Error(), `"k"`) {
			t.Errorf("error shows the key: %v", err)
		}
	}
	// Both forms round-trip through Save's encoding.
	in := Config{APIKeys: map[string]string{"k1": "a", "k2": "b", "k3": "c"}, APIKeyScopes: map[string][]string{"k2": {"s"}, "k3": {}}}
	data, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out Config
	if err := json.Unmarshal(data, &out); err != nil || out.APIKeys["k1"] != "a" || out.APIKeys["k2"] != "b" ||
		len(out.APIKeyScopes) != 2 || out.APIKeyScopes["k2"][0] != "s" || out.scopeOf("k3").allows("s") || !out.scopeOf("k1").allows("s") {
		t.Fatalf("round trip %s: %+v %v", data, out, err)
	}
}

// TestRequestsPerSandboxCap: past the cap, 429; a finished request frees
// its slot; another sandbox is not affected.
func TestRequestsPerSandboxCap(t *testing.T) {
	cfg := &Config{
		APIKeys:   map[string]string{"k": "n"},
		Sandboxes: map[string]SandboxConfig{"sbx-a": {Token: tok}, "sbx-b": {Token: tok}},
		Limits:    Limits{RequestsPerSandbox: 2},
	}
	p, front := testProxy(t, cfg)
	hold := make(chan struct{})
	entered := make(chan struct{}, 8)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			entered <- struct{}{}
			<-hold
		}
	})
	linkSandbox(t, p, "sbx-a", h)
	linkSandbox(t, p, "sbx-b", h)
	var wg sync.WaitGroup
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); get(t, front, "k", "sbx-a", "/hold") }()
		<-entered
	}
	if code, body := get(t, front, "k", "sbx-a", "/"); code != 429 || !strings.Contains(body, "TOO_MANY_REQUESTS") {
		t.Errorf("third request: %d %s, want 429", code, body)
	}
	if code, _ := get(t, front, "k", "sbx-b", "/"); code != 200 {
		t.Errorf("other sandbox: %d", code)
	}
	close(hold)
	wg.Wait()
	if code, _ := get(t, front, "k", "sbx-a", "/"); code != 200 {
		t.Errorf("after the streams ended: %d", code)
	}
}
