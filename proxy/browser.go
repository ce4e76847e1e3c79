package proxy

import (
	"crypto/rand"
	"encoding/base64"
	"mime"
	"net/http"
	"strings"
	"sync"
	"time"
)

// SessionCookie is the browser login cookie's name. Its value is a random
// session id; the API key never leaves the proxy (docs/proxy.md, "Browser
// login and the web terminal").
const SessionCookie = "tl_proxy_session"

// cookieKey marks the context of a request the login cookie
// authenticated, for its response's headers (browserResponse).
type cookieKey struct{}

// browserSession is one browser login.
type browserSession struct {
	name    string    // the API key's name, for logs
	scope   keyScope  // the key's scope at login
	origin  string    // the only origin the cookie is accepted from
	expires time.Time // absolute: a login lasts at most the TTL
}

// browserSessions are the live logins, bounded in number and age.
type browserSessions struct {
	mu  sync.Mutex
	m   map[string]*browserSession
	max int
	ttl time.Duration
	now func() time.Time
}

func newBrowserSessions(max int, ttl time.Duration) *browserSessions {
	if max <= 0 {
		max = DefaultLimits().BrowserSessions
	}
	if ttl <= 0 {
		ttl = DefaultLimits().BrowserSessionTTL
	}
	return &browserSessions{m: map[string]*browserSession{}, max: max, ttl: ttl, now: time.Now}
}

// create stores s and returns its id. At the bound the expired logins go
// first, then the one that would expire soonest: logging in always works,
// and the map never grows past max.
func (b *browserSessions) create(s browserSession) string {
	var raw [32]byte
	_, _ = rand.Read(raw[:])
	id := base64.RawURLEncoding.EncodeToString(raw[:])
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	s.expires = now.Add(b.ttl)
	if len(b.m) >= b.max {
		oldest := ""
		for k, v := range b.m {
			if !now.Before(v.expires) {
				delete(b.m, k)
			} else if oldest == "" || v.expires.Before(b.m[oldest].expires) {
				oldest = k
			}
		}
		if len(b.m) >= b.max {
			delete(b.m, oldest)
		}
	}
	b.m[id] = &s
	return id
}

// lookup returns the live login of id, if it was made on origin.
func (b *browserSessions) lookup(id, origin string) (*browserSession, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, ok := b.m[id]
	if !ok {
		return nil, false
	}
	if !b.now().Before(s.expires) {
		delete(b.m, id)
		return nil, false
	}
	return s, s.origin == origin
}

func (b *browserSessions) remove(id string) {
	b.mu.Lock()
	delete(b.m, id)
	b.mu.Unlock()
}

func (b *browserSessions) len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.m)
}

// sessionIDs are the values of every cookie named SessionCookie: a page
// on a port route can set one for the parent domain (cookie tossing), so
// the first that names a live login of this origin wins, not the first.
func sessionIDs(req *http.Request) []string {
	var ids []string
	for _, c := range req.CookiesNamed(SessionCookie) {
		if c.Value != "" {
			ids = append(ids, c.Value)
		}
	}
	return ids
}

// ownOrigin is the origin of the host the request was sent to, as a
// browser serializes it.
func ownOrigin(req *http.Request) string {
	scheme := "http"
	if req.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + strings.ToLower(req.Host)
}

// cookieRefusal says why a request authenticated by the login cookie is
// refused, or "" when it passes. Every *.<domain> host is one site, so
// SameSite=Strict does not stop a page on a sandbox's port route: the
// request must come from the page's own origin. A browser sends Origin on
// every request but a same-origin GET or HEAD; those pass on
// Sec-Fetch-Site: same-origin, which a page cannot forge (a port route is
// same-site, never same-origin). A body must say its type, so an HTML
// form (the only cross-origin body that needs no preflight) never passes.
func cookieRefusal(req *http.Request, want string) string {
	origin, site := req.Header.Get("Origin"), req.Header.Get("Sec-Fetch-Site")
	if site != "" && site != "same-origin" {
		return "Sec-Fetch-Site: " + site + ": the login cookie is accepted only from the proxy's own page at " + want
	}
	safe := (req.Method == http.MethodGet || req.Method == http.MethodHead) && req.Header.Get("Upgrade") == ""
	switch {
	case origin == want:
	case origin == "" && safe && site == "same-origin":
	case origin == "":
		return "no Origin header: the login cookie is accepted only from the proxy's own page at " + want
	default:
		return "Origin " + origin + " is not " + want + ": the login cookie is accepted only from the proxy's own page"
	}
	if req.ContentLength == 0 {
		return ""
	}
	want, what := "application/json", "a JSON body"
	if req.Method == http.MethodPut && req.URL.Path == "/api/v1/files" {
		want, what = "application/octet-stream", "a file upload"
	}
	if mt, _, err := mime.ParseMediaType(req.Header.Get("Content-Type")); err != nil || mt != want {
		return what + " with the login cookie needs Content-Type: " + want
	}
	return ""
}

// cookieRoute reports whether the login cookie may authenticate req: only
// the proxy's own routes on a host that names a sandbox's API (or no
// sandbox), never a <port>-<sandbox> route, never one chosen by header.
func cookieRoute(req *http.Request, r route, routeErr error) bool {
	if req.Header.Get("X-Tensorlake-Sandbox-Id") != "" || (routeErr == nil && r.port != 0) {
		return false
	}
	path := req.URL.Path
	if routeErr != nil {
		return path == "/_proxy/sandboxes"
	}
	return path == "/api/v1" || strings.HasPrefix(path, "/api/v1/") || path == "/_proxy/sandboxes"
}

// stripCookie removes the cookie named name from every Cookie header of
// h, keeping the others in their order.
func stripCookie(h http.Header, name string) {
	vals := h.Values("Cookie")
	if len(vals) == 0 {
		return
	}
	var kept []string
	for _, v := range vals {
		for _, part := range strings.Split(v, ";") {
			part = strings.TrimSpace(part)
			n, _, _ := strings.Cut(part, "=")
			if part != "" && strings.TrimSpace(n) != name {
				kept = append(kept, part)
			}
		}
	}
	h.Del("Cookie")
	if len(kept) > 0 {
		h.Set("Cookie", strings.Join(kept, "; "))
	}
}
