package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"

	"github.com/coder/websocket"
)

// config is what every verb needs: where the proxy is and the API key.
type config struct {
	apiKey   string
	proxyURL string
}

// defaultProxyURL is make run's front door. The official SDK defaults to
// Tensorlake's cloud; this client is for tl-proxy, so it defaults to the
// local one (docs/cli.md).
const defaultProxyURL = "http://127.0.0.1:8080"

// idRE bounds what becomes part of a Host header, a URL path or a file
// name: sandbox ids and names, PTY session ids.
var idRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// target is one sandbox's API as the SDK reaches it (resolveProxyTarget in
// npm tensorlake): a proxy on localhost or 127.0.0.1 gets the proxy URL
// as is and `Host: <sandbox>.local`; any other gets the URL's scheme, host
// and port (its path dropped) and `X-Tensorlake-Sandbox-Id: <sandbox>`.
type target struct {
	sandbox string
	base    string // scheme://host[:port][/path], no trailing slash
	host    string // Host override, "" for the URL's own
	header  http.Header
}

func (c config) sandbox(id string) (*target, error) {
	if !idRE.MatchString(id) {
		return nil, usageErrorf("%q is not a sandbox id or name (1-64 letters, digits, '.', '-', '_')", id)
	}
	t, local, err := c.proxyTarget()
	if err != nil {
		return nil, err
	}
	t.sandbox = id
	if local {
		t.host = id + ".local"
	} else {
		t.header.Set("X-Tensorlake-Sandbox-Id", id)
	}
	return t, nil
}

// proxyTarget is the proxy's own routes (and the base every sandbox's
// shares); local says whether it is on localhost or 127.0.0.1.
func (c config) proxyTarget() (t *target, local bool, err error) {
	u, err := c.parsedProxyURL()
	if err != nil {
		return nil, false, err
	}
	t = &target{header: c.authHeader()}
	if h := u.Hostname(); h == "localhost" || h == "127.0.0.1" {
		t.base = strings.TrimRight(c.proxy(), "/")
		return t, true, nil
	}
	t.base = u.Scheme + "://" + u.Host
	return t, false, nil
}

// proxy is the proxy URL in effect: the flag's, the variable's, or the
// default.
func (c config) proxy() string {
	if c.proxyURL == "" {
		return defaultProxyURL
	}
	return c.proxyURL
}

func (c config) parsedProxyURL() (*url.URL, error) {
	u, err := url.Parse(c.proxy())
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, usageErrorf("proxy URL %q is not an http(s) URL (--proxy-url or $TENSORLAKE_SANDBOX_PROXY_URL)", c.proxy())
	}
	return u, nil
}

func (c config) authHeader() http.Header {
	h := http.Header{}
	if c.apiKey != "" {
		h.Set("Authorization", "Bearer "+c.apiKey)
	}
	return h
}

// request builds a request to path (with its query) on the sandbox's API.
func (t *target) request(ctx context.Context, method, path string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, t.base+path, body)
	if err != nil {
		return nil, err
	}
	for k, v := range t.header {
		req.Header[k] = v
	}
	if t.host != "" {
		req.Host = t.host
	}
	return req, nil
}

// httpClient has no overall timeout: downloads, uploads and run streams
// last as long as they move; connection set-up is bounded by the dialer's.
var httpClient = &http.Client{}

// do sends a request; a status outside 2xx becomes an error saying what
// failed in the seed's words ("failed to <what> (HTTP <status>): ...").
func (t *target) do(req *http.Request, what string) (*http.Response, error) {
	resp, err := httpClient.Do(req)
	if err != nil {
		return nil, connError(t, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		return nil, apiError(what, resp)
	}
	return resp, nil
}

// postJSON posts in as JSON and decodes a JSON answer into out.
func (t *target) postJSON(ctx context.Context, path string, in, out any, what string) error {
	data, err := json.Marshal(in)
	if err != nil {
		return err
	}
	req, err := t.request(ctx, http.MethodPost, path, bytes.NewReader(data))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := t.do(req, what)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(out); err != nil {
		return fmt.Errorf("failed to %s: bad answer: %v", what, err)
	}
	return nil
}

// dialWS opens a WebSocket to path (with its query) on the sandbox's API.
func (t *target) dialWS(ctx context.Context, path string, extra http.Header, what string) (*websocket.Conn, error) {
	u := "ws" + strings.TrimPrefix(t.base, "http") + path // http->ws, https->wss
	h := t.header.Clone()
	for k, v := range extra {
		h[k] = v
	}
	c, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: h, Host: t.host, HTTPClient: httpClient})
	if err != nil {
		if resp != nil && resp.StatusCode/100 != 2 && resp.StatusCode != http.StatusSwitchingProtocols {
			return nil, apiError(what, resp)
		}
		return nil, connError(t, err)
	}
	return c, nil
}

// httpStatusError is an API refusal; Status lets callers act on 404.
type httpStatusError struct {
	Status int
	Code   string
	msg    string
}

func (e *httpStatusError) Error() string { return e.msg }

// apiError renders an error answer on one line: the spec's JSON
// {"error","code"} as "text (CODE)", anything else as its first 200 bytes.
func apiError(what string, resp *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	var body struct{ Error, Code string }
	text := strings.TrimSpace(string(data))
	if json.Unmarshal(data, &body) == nil && body.Error != "" {
		text = body.Error
		if body.Code != "" {
			text += " (" + body.Code + ")"
		}
	}
	if len(text) > 200 {
		text = text[:200] + "..."
	}
	text = strings.Join(strings.Fields(text), " ")
	if resp.StatusCode == http.StatusUnauthorized {
		text += "; set --api-key or $TENSORLAKE_API_KEY"
	}
	return &httpStatusError{Status: resp.StatusCode, Code: body.Code,
		msg: fmt.Sprintf("failed to %s (HTTP %d %s): %s", what, resp.StatusCode, http.StatusText(resp.StatusCode), text)}
}

// connError says which proxy could not be reached, and how to point at
// another one.
func connError(t *target, err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return fmt.Errorf("cannot reach the sandbox proxy at %s: %v (set --proxy-url or $TENSORLAKE_SANDBOX_PROXY_URL)", t.base, err)
}
