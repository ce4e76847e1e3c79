package proxy

import (
	"embed"
	"fmt"
	"html/template"
	"io/fs"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/tensorlake/tl-agent/internal/httpx"
)

// webtermFiles are the web terminal's pages, script and vendored xterm.js
// (rebuilt by scripts/webterm-assets.sh): served from the binary, with no
// network.
//
//go:embed webterm
var webtermFiles embed.FS

var pageTemplates = template.Must(template.ParseFS(webtermFiles, "webterm/*.html"))

// loginBodyMax bounds the login form's body: a key and a target.
const loginBodyMax = 4 << 10

// pagePath reports whether path is one of the proxy's own browser routes,
// served on a host naming a sandbox's API or no sandbox (never on a port
// route, where every path belongs to the sandbox).
func pagePath(path string, rootHost bool) bool {
	switch {
	case path == "/_proxy/login", path == "/_proxy/logout", strings.HasPrefix(path, "/_proxy/webterm/"):
		return true
	case rootHost:
		return path == "/"
	default:
		return path == "/terminal"
	}
}

// servePage serves the browser routes when req is for one, and reports
// whether it was.
func (p *Proxy) servePage(w http.ResponseWriter, req *http.Request) bool {
	if req.Header.Get("X-Tensorlake-Sandbox-Id") != "" {
		return false
	}
	r, err := p.selectRoute(req)
	if (err == nil && r.port != 0) || !pagePath(req.URL.Path, err != nil) {
		return false
	}
	p.pages.ServeHTTP(w, req)
	return true
}

func (p *Proxy) pageRoutes() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(webtermFiles, "webterm")
	files := http.StripPrefix("/_proxy/webterm/", http.FileServerFS(static))
	mux.Handle("GET /_proxy/webterm/", pageHeaders(files))
	mux.HandleFunc("GET /terminal", p.servePageTemplate("terminal.html"))
	mux.HandleFunc("GET /{$}", p.servePageTemplate("index.html"))
	mux.HandleFunc("POST /_proxy/login", p.handleLogin)
	mux.HandleFunc("POST /_proxy/logout", p.handleLogout)
	return httpx.Routes(mux)
}

// pageHeaders are on every page and asset: no framing (clickjacking), no
// type sniffing, no referrer to other origins, scripts only from the proxy.
func pageHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		setPageHeaders(w.Header())
		h.ServeHTTP(w, req)
	})
}

func setPageHeaders(hd http.Header) {
	hd.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "+
		"connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "same-origin") // no-referrer would make a form's Origin "null"
	hd.Set("Cache-Control", "no-cache")
}

// servePageTemplate serves a page; it holds no secret (the login state is
// learned by the page's own requests), so it needs no login itself.
func (p *Proxy) servePageTemplate(name string) http.HandlerFunc {
	return pageHeaders(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		failed := ""
		if req.URL.Query().Get("login") == "failed" {
			failed = "That API key was not accepted here."
		}
		p.renderPage(w, req, name, failed, http.StatusOK)
	})).ServeHTTP
}

// renderPage writes page name with its login form's message (none when
// failed is empty) and status.
func (p *Proxy) renderPage(w http.ResponseWriter, req *http.Request, name, failed string, status int) {
	r, err := p.selectRoute(req)
	data := map[string]string{"Domain": p.cfg.Domain, "Failed": failed}
	if err == nil {
		data["Sandbox"] = r.sandbox
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if err := pageTemplates.ExecuteTemplate(w, name, data); err != nil {
		p.log.Warn().Err(err).Str("page", name).Msg("page template")
	}
}

// handleLogin takes the login form (the key in a POST body, never a URL),
// and on a key that reaches this host's sandbox sets the session cookie:
// host-only, HttpOnly, SameSite=Strict, Secure over TLS. The form must
// come from this host's own page (Origin), so no other site can log a
// browser in as someone else.
func (p *Proxy) handleLogin(w http.ResponseWriter, req *http.Request) {
	origin := ownOrigin(req)
	r, routeErr := p.selectRoute(req)
	next := landing(routeErr)
	if got := req.Header.Get("Origin"); got != origin {
		httpx.WriteError(w, http.StatusForbidden, "ORIGIN_REFUSED", "log in from the proxy's own page at "+origin+" (Origin "+got+")")
		return
	}
	give, ok := p.loginAllowed(w, req, origin)
	if !ok {
		return
	}
	req.Body = http.MaxBytesReader(w, req.Body, loginBodyMax)
	if err := req.ParseForm(); err != nil {
		httpx.WriteError(w, http.StatusBadRequest, "INVALID_REQUEST", "login: a form with the field key (at most 4 KiB)")
		return
	}
	name, scope, ok := p.lookupKey(strings.TrimSpace(req.PostForm.Get("key")))
	if ok && routeErr == nil && !scope.allows(r.sandbox) {
		ok = false
	}
	if !ok {
		p.log.Info().Str("origin", origin).Str("remote", req.RemoteAddr).Msg("browser login refused")
		http.Redirect(w, req, next+"?login=failed", http.StatusSeeOther)
		return
	}
	give() // a good key: only failures count
	id := p.logins.create(browserSession{name: name, scope: scope, origin: origin})
	http.SetCookie(w, &http.Cookie{
		Name: SessionCookie, Value: id, Path: "/", MaxAge: int(p.logins.ttl.Seconds()),
		HttpOnly: true, Secure: req.TLS != nil, SameSite: http.SameSiteStrictMode,
	})
	p.log.Info().Str("user", name).Str("origin", origin).Str("remote", req.RemoteAddr).Msg("browser login")
	http.Redirect(w, req, next, http.StatusSeeOther)
}

// loginAllowed takes a failure from the login limiter for req's source
// before its key is looked at, or answers 429 with Retry-After. A bad
// form counts as a failure too: it is one more attempt.
func (p *Proxy) loginAllowed(w http.ResponseWriter, req *http.Request, origin string) (give func(), ok bool) {
	give, wait, log, unlogged := p.loginLimit.take(req.RemoteAddr)
	if give != nil {
		return give, true
	}
	if log {
		p.loginLimit.logRefusal(p.log, req.RemoteAddr, origin, unlogged)
	}
	secs := max(int(math.Ceil(wait.Seconds())), 1)
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	bound := fmt.Sprintf("(%d per %v); retry in %d s", int(p.loginLimit.burst), p.loginLimit.window, secs)
	if wantsPage(req) {
		// The login form's own post: the page again, with the reason
		// where a wrong key's message goes, not a JSON error.
		page := "index.html"
		if _, err := p.selectRoute(req); err == nil {
			page = "terminal.html"
		}
		setPageHeaders(w.Header())
		p.renderPage(w, req, page, "Too many failed logins from this address "+bound+".", http.StatusTooManyRequests)
		return nil, false
	}
	httpx.WriteError(w, http.StatusTooManyRequests, "TOO_MANY_FAILED_LOGINS", "too many failed logins from this address "+bound)
	return nil, false
}

// wantsPage is true for a browser's navigation (its Accept names HTML
// first-class), not for scripts and SDKs, which get the JSON error.
func wantsPage(req *http.Request) bool {
	return strings.Contains(req.Header.Get("Accept"), "text/html")
}

// handleLogout ends the login of this host's cookie (from its own page).
func (p *Proxy) handleLogout(w http.ResponseWriter, req *http.Request) {
	origin := ownOrigin(req)
	if got := req.Header.Get("Origin"); got != origin {
		httpx.WriteError(w, http.StatusForbidden, "ORIGIN_REFUSED", "log out from the proxy's own page at "+origin+" (Origin "+got+")")
		return
	}
	for _, id := range sessionIDs(req) {
		if _, ok := p.logins.lookup(id, origin); ok {
			p.logins.remove(id)
		}
	}
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, Secure: req.TLS != nil, SameSite: http.SameSiteStrictMode})
	_, routeErr := p.selectRoute(req)
	http.Redirect(w, req, landing(routeErr), http.StatusSeeOther)
}

// landing is the page of a host: the terminal on a sandbox's, the list
// on the proxy's own.
func landing(routeErr error) string {
	if routeErr == nil {
		return "/terminal"
	}
	return "/"
}

// browserResponse marks a response to a cookie-authenticated request:
// never sniffed into a page of the proxy's origin, and a file is always a
// download, so a file written in the sandbox cannot run script there.
func browserResponse(resp *http.Response) {
	resp.Header.Set("X-Content-Type-Options", "nosniff")
	if resp.Request.URL.Path == "/api/v1/files" {
		name := resp.Request.URL.Query().Get("path")
		disp := "attachment"
		if name = name[strings.LastIndexByte(name, '/')+1:]; name != "" {
			disp += "; filename*=UTF-8''" + url.PathEscape(name)
		}
		resp.Header.Set("Content-Disposition", disp)
	}
}
