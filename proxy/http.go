package proxy

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/internal/copybuf"
	"github.com/tensorlake/tl-agent/internal/httpx"
	"github.com/tensorlake/tl-agent/internal/relay"
	"github.com/tensorlake/tl-agent/internal/reqid"
	"github.com/tensorlake/tl-agent/uplink"
)

// Proxy is the reference proxy: registry, uplink acceptor, front doors.
type Proxy struct {
	cfg *Config
	log zerolog.Logger
	reg *Registry

	transport *http.Transport
	rp        *httputil.ReverseProxy

	inflight *inflight // proxied requests per sandbox
	met      *proxyMetrics
	operator *operatorDoor // the operator door's state (operator.go)
	logins   *browserSessions
	// loginLimit bounds failed browser logins per source (loginlimit.go).
	loginLimit *loginLimiter
	pages      http.Handler // the browser routes (webterm.go)

	// serveSSH is the SSH front door, set by sshfront.go when configured.
	serveSSH func(ctx context.Context, ln net.Listener) error

	// beforeWelcome, when set (tests), runs between a link's registration
	// and its welcome: the window a request woken by the registration can
	// open a stream in.
	beforeWelcome func(*Link)

	wg sync.WaitGroup
}

// New returns a proxy for cfg, which it validates first (Validate fills
// cfg's defaults); a config Validate refuses is New's error.
func New(cfg *Config, log zerolog.Logger) (*Proxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p := &Proxy{cfg: cfg, log: log, reg: NewRegistry(cfg), inflight: newInflight(cfg.Limits.RequestsPerSandbox),
		logins:     newBrowserSessions(cfg.Limits.BrowserSessions, cfg.Limits.BrowserSessionTTL),
		loginLimit: newLoginLimiter(cfg.Limits)}
	p.transport = &http.Transport{
		DialContext:         p.dialStream,
		MaxIdleConnsPerHost: 32,
		IdleConnTimeout:     60 * time.Second,
		// Bodies are streamed, never buffered whole; SSE and WebSocket
		// responses flow as they come.
		DisableCompression: true,
		ForceAttemptHTTP2:  false,
	}
	// Pooled streams of a link that went away are useless; drop them so
	// the next request dials the new link.
	p.reg.onChange = func(string) { p.transport.CloseIdleConnections() }
	p.met = newProxyMetrics(p.reg)
	p.reg.count = p.met.countStream
	p.operator = newOperatorDoor()
	p.rp = &httputil.ReverseProxy{
		// The reverse proxy hides the body in a wrapper of its own; an
		// upload that can be spliced gets its own back (splice.go).
		Rewrite:       func(pr *httputil.ProxyRequest) { spliceBody(pr.Out) },
		Transport:     p.transport,
		FlushInterval: -1, // flush every write: SSE and terminal output
		// 256 KiB copies instead of 32 KiB: a download is written to the
		// client in up to 256 KiB writes (what the stream holds), one
		// syscall where there were eight. Reads return what is there, so
		// small messages still go out at once.
		BufferPool:   copybuf.Pool{},
		ErrorHandler: p.upstreamError,
		// A body cut by the progress rule makes the agent answer about a
		// truncated body; the client is told the real reason instead.
		ModifyResponse: func(resp *http.Response) error {
			// The client gets the proxy's ids (set by reqid.Middleware),
			// not a second copy from the sandbox.
			reqid.StripResponse(resp.Header)
			b, _ := resp.Request.Context().Value(bodyKey{}).(*progressBody)
			if b.wasCut() {
				resp.Body.Close()
				return errBodyTooSlow
			}
			if b.wasSpliced() {
				// The server's reader did not see the body (splice.go):
				// the client must not send another request on this
				// connection.
				resp.Header.Set("Connection", "close")
			}
			if resp.Request.Context().Value(cookieKey{}) != nil {
				browserResponse(resp)
			}
			sinkUpgrade(resp)
			return p.spliceResponse(resp)
		},
		ErrorLog: nil,
	}
	if cfg.SSHAuthorizedKeys != "" {
		p.serveSSH = p.serveSSHFront
	}
	p.pages = p.pageRoutes()
	return p, nil
}

// Registry exposes the registry to the other front doors.
func (p *Proxy) Registry() *Registry { return p.reg }

// track runs f as a goroutine the proxy waits for in Wait.
func (p *Proxy) track(f func()) {
	p.wg.Add(1)
	go func() { defer p.wg.Done(); f() }()
}

// Wait returns when every connection goroutine has ended.
func (p *Proxy) Wait() { p.wg.Wait() }

// route is where one request goes. Its string form is the URL host of the
// outgoing request, so the transport pools streams per sandbox and target.
type route struct {
	sandbox string
	port    int // 0: the agent's API
}

func (r route) host() string {
	if r.port == 0 {
		return r.sandbox + ".api"
	}
	return r.sandbox + ".port-" + strconv.Itoa(r.port)
}

func parseRouteHost(hostport string) (route, bool) {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = hostport
	}
	id, target, ok := strings.Cut(host, ".")
	if !ok {
		return route{}, false
	}
	if target == "api" {
		return route{sandbox: id}, true
	}
	p, err := strconv.Atoi(strings.TrimPrefix(target, "port-"))
	if err != nil || !strings.HasPrefix(target, "port-") {
		return route{}, false
	}
	return route{sandbox: id, port: p}, true
}

// dialStream is the transport's dialer: every connection is an uplink
// stream to the agent's API or to a port inside the sandbox.
func (p *Proxy) dialStream(ctx context.Context, _, addr string) (net.Conn, error) {
	r, ok := parseRouteHost(addr)
	if !ok {
		return nil, errors.New("bad route " + addr)
	}
	h := uplink.Header{Kind: uplink.KindAPI}
	if r.port != 0 {
		h = uplink.Header{Kind: uplink.KindTCP, Port: r.port}
	}
	// No User in the header: the transport pools these streams per
	// sandbox and target, so one stream serves many users' requests in
	// turn; a name written when it was opened would be wrong for the next.
	// The proxy logs the user per request instead (ServeHTTP).
	return p.reg.Open(ctx, r.sandbox, h)
}

// ServeHTTP is the front door: auth, sandbox selection, forwarding.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if p.servePage(w, req) {
		return
	}
	r, routeErr := p.selectRoute(req)
	user, scope := "public", keyScope{all: true}
	// A public port (the sandbox's public_ports) needs no key: a browser
	// opens it. Every other route needs one, and a request without a
	// valid key learns nothing about routes, not even a malformed one.
	viaCookie := false
	if routeErr != nil || !p.cfg.isPublic(r.sandbox, r.port) {
		a := p.authenticateRequest(req, cookieRoute(req, r, routeErr))
		if a.refusal != "" {
			httpx.WriteError(w, http.StatusForbidden, "ORIGIN_REFUSED", a.refusal)
			return
		}
		user, scope, viaCookie = a.user, a.scope, a.viaCookie
		if !a.ok {
			msg := "missing or invalid API key: send Authorization: Bearer <api key>"
			if routeErr == nil && r.port != 0 {
				msg += " (port " + strconv.Itoa(r.port) + " is not in sandbox " + r.sandbox + "'s public_ports)"
			}
			httpx.WriteError(w, http.StatusUnauthorized, "UNAUTHORIZED", msg)
			return
		}
	}
	if routeErr != nil {
		httpx.WriteError(w, http.StatusBadRequest, "NO_SANDBOX", routeErr.Error())
		return
	}
	// Scope first, as the SSH door does: a scoped key learns nothing about
	// sandboxes outside its list, not even whether they exist.
	if !scope.allows(r.sandbox) {
		httpx.WriteError(w, http.StatusForbidden, "SANDBOX_FORBIDDEN", "sandbox "+r.sandbox+" is not reachable with this API key")
		return
	}
	if !p.reg.Known(r.sandbox) {
		httpx.WriteError(w, http.StatusNotFound, "SANDBOX_NOT_FOUND", "sandbox "+r.sandbox+" not found")
		return
	}
	if p.reg.WaitLink(req.Context(), r.sandbox, LinkWait) == nil {
		httpx.WriteError(w, http.StatusServiceUnavailable, "SANDBOX_UNAVAILABLE", "sandbox "+r.sandbox+" is not connected")
		return
	}
	release, ok := p.inflight.acquire(r.sandbox)
	if !ok {
		httpx.WriteError(w, http.StatusTooManyRequests, "TOO_MANY_REQUESTS", "sandbox "+r.sandbox+" has "+strconv.Itoa(p.cfg.Limits.RequestsPerSandbox)+" requests and streams open through the proxy; retry when some end")
		return
	}
	defer release()
	// The query is left out: it may hold a PTY token.
	log := reqid.Logger(req.Context(), p.log)
	log.Debug().Str("user", user).Str("sandbox", r.sandbox).Int("port", r.port).Str("method", req.Method).Str("path", req.URL.Path).Msg("request")
	body := p.watchBody(w, req)
	defer body.finish()
	if body != nil {
		kind := uplink.KindAPI
		if r.port != 0 {
			kind = uplink.KindTCP
		}
		body.splicedBytes = p.met.spliced.WithLabelValues(kind, "to_sandbox")
	}
	ctx := context.WithValue(req.Context(), bodyKey{}, body)
	if viaCookie {
		ctx = context.WithValue(ctx, cookieKey{}, true)
	}
	out := req.Clone(ctx)
	out.URL.Scheme = "http"
	out.URL.Host = r.host()
	if r.port == 0 {
		out.Host = r.sandbox + "." + p.cfg.Domain
	}
	stripCredentials(out.Header)
	// By default an HTTP/1 server drains and closes the request body when
	// the handler starts its response. The agent may answer (run's SSE
	// headers) before the transport has finished with the body (it reads
	// once more to see EOF); that read then fails, the transport drops the
	// stream mid-response, and the agent sees its client gone. Full duplex
	// leaves the body to the transport. Only here: a refusal above answers before the body, and the server must
	// then drain it as usual, or the client gets a reset, not the answer.
	_ = http.NewResponseController(w).EnableFullDuplex()
	if body != nil {
		out.Body = body
	}
	var stream idleShrinker
	ctx = context.WithValue(out.Context(), streamKey{}, &stream)
	w = p.watchWrites(w)
	ctx = context.WithValue(ctx, writerKey{}, w)
	out = out.WithContext(httptrace.WithClientTrace(ctx, stream.trace()))
	p.rp.ServeHTTP(w, out)
	stream.shrink()
}

// idleShrinker frees the receive buffer of the stream a request used once
// its answer is relayed: the transport pools up to 32 idle streams per
// route, and yamux keeps each one's buffer at the size a burst grew it to
// (up to the 4 MiB window, a bytes.Buffer of up to 8 MiB) for as long as
// the stream lives. Shrink frees only an empty buffer, so a stream that
// another request took from the pool meanwhile loses nothing.
type idleShrinker struct{ conn atomic.Pointer[net.Conn] }

func (s *idleShrinker) trace() *httptrace.ClientTrace {
	return &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) { s.conn.Store(&info.Conn) }}
}

func (s *idleShrinker) shrink() {
	if c := s.conn.Load(); c != nil {
		if sh, ok := (*c).(interface{ Shrink() }); ok {
			sh.Shrink()
		}
	}
}

// streamKey keys the request's idleShrinker, which knows its stream
// (sinkUpgrade).
type streamKey struct{}

// sinkUpgrade gives an upgraded connection (101: a port route's
// WebSocket or raw upgrade) a body the reverse proxy's copier to the
// client takes through WriteTo (upgradedBody).
func sinkUpgrade(resp *http.Response) {
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return
	}
	s, _ := resp.Request.Context().Value(streamKey{}).(*idleShrinker)
	body, ok := resp.Body.(io.ReadWriteCloser)
	if s == nil || !ok {
		return
	}
	if c := s.conn.Load(); c != nil {
		resp.Body = &upgradedBody{ReadWriteCloser: body, stream: *c}
	}
}

// upgradedBody is the sandbox's side of an upgraded connection. The
// reverse proxy copies it to the client with io.Copy, so WriteTo is the
// whole copy: the first Read drains what the transport buffered past the
// 101's headers (at most its 4 KiB read buffer, less than the copy
// buffer, so one Read takes it all), and the rest comes from the stream
// through relay.Copy: a small frame goes from yamux's receive loop
// straight to the client's socket, one goroutine wake-up fewer per
// keystroke (internal/yamux/FORK.md, SinkTo).
type upgradedBody struct {
	io.ReadWriteCloser
	stream net.Conn
}

func (b *upgradedBody) WriteTo(w io.Writer) (int64, error) {
	buf := copybuf.Get()
	defer copybuf.Put(buf)
	n, err := b.ReadWriteCloser.Read(buf)
	if n > 0 {
		if _, werr := w.Write(buf[:n]); werr != nil {
			return 0, werr
		}
	}
	if err == io.EOF {
		return int64(n), nil
	}
	if err != nil {
		return int64(n), err
	}
	dst, ok := w.(net.Conn)
	if !ok {
		m, err := io.CopyBuffer(struct{ io.Writer }{w}, struct{ io.Reader }{b.ReadWriteCloser}, buf)
		return int64(n) + m, err
	}
	m, err := relay.Copy(dst, b.stream, buf)
	return int64(n) + m, err
}

// strippedHeaders are the proxy's own credentials and routing: removed
// from every request relayed to a sandbox, API and port routes alike
// (public or not), so code inside the sandbox never sees the user's API
// key. The browser login cookie (SessionCookie) is removed from the
// Cookie header by name, the sandbox's own cookies kept.
var strippedHeaders = []string{"Authorization", "X-Tensorlake-Sandbox-Id"}

func stripCredentials(h http.Header) {
	for _, k := range strippedHeaders {
		h.Del(k)
	}
	stripCookie(h, SessionCookie)
}

// bearerKey returns the token of an "Authorization: Bearer <token>"
// header. The scheme is case-insensitive (RFC 7235: "bearer", "BEARER").
func bearerKey(auth string) (string, bool) {
	scheme, key, ok := strings.Cut(strings.TrimSpace(auth), " ")
	key = strings.TrimLeft(key, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || key == "" {
		return "", false
	}
	return key, true
}

// authenticate returns the name and scope of the request's API key.
func (p *Proxy) authenticate(req *http.Request) (string, keyScope, bool) {
	key, ok := bearerKey(req.Header.Get("Authorization"))
	if !ok {
		return "", keyScope{}, false
	}
	return p.lookupKey(key)
}

// auth is who a request is: ok when a key or a login authenticates it;
// refusal when a live login cookie came from the wrong origin or with a
// wrong body.
type auth struct {
	user      string
	scope     keyScope
	ok        bool
	viaCookie bool
	refusal   string
}

// authenticateRequest authenticates by the bearer key (which wins when
// sent: SDKs), or else, where cookieOK, by the browser login cookie under
// its rules (cookieRefusal).
func (p *Proxy) authenticateRequest(req *http.Request, cookieOK bool) auth {
	if req.Header.Get("Authorization") != "" || !cookieOK {
		user, scope, ok := p.authenticate(req)
		return auth{user: user, scope: scope, ok: ok}
	}
	origin := ownOrigin(req)
	for _, id := range sessionIDs(req) {
		s, ok := p.logins.lookup(id, origin)
		if !ok {
			continue
		}
		if refusal := cookieRefusal(req, origin); refusal != "" {
			p.log.Warn().Str("user", s.name).Str("origin", req.Header.Get("Origin")).Str("path", req.URL.Path).
				Str("remote", req.RemoteAddr).Str("reason", refusal).Msg("login cookie refused")
			return auth{refusal: refusal}
		}
		return auth{user: s.name, scope: s.scope, ok: true, viaCookie: true}
	}
	return auth{}
}

// lookupKey returns the name and scope of API key key.
func (p *Proxy) lookupKey(key string) (string, keyScope, bool) {
	// Constant time per key; the number of keys is not secret.
	match, found := "", false
	for k := range p.cfg.APIKeys {
		if subtle.ConstantTimeCompare([]byte(k), []byte(key)) == 1 {
			match, found = k, true
		}
	}
	if !found {
		return "", keyScope{}, false
	}
	return p.cfg.APIKeys[match], p.cfg.scopeOf(match), true
}

// selectRoute picks the sandbox (and port) from the header or Host, in the
// spec's order: X-Tensorlake-Sandbox-Id, <port>-<sandbox>.<domain> or
// .local, <sandbox>.<domain>, <sandbox>.local.
func (p *Proxy) selectRoute(req *http.Request) (route, error) {
	if id := req.Header.Get("X-Tensorlake-Sandbox-Id"); id != "" {
		// Exact: ids are lower-case, and only host names fold case.
		if !ValidSandboxID(id) {
			return route{}, errors.New("X-Tensorlake-Sandbox-Id: not a sandbox id (lower-case letters, digits, '-' and '_')")
		}
		return route{sandbox: id}, nil
	}
	host, _, err := net.SplitHostPort(req.Host)
	if err != nil {
		host = req.Host
	}
	// Host names fold case; a trailing dot is the same name, fully
	// qualified.
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	var label string
	for _, suffix := range []string{"." + p.cfg.Domain, ".local"} {
		if l, ok := strings.CutSuffix(host, suffix); ok && l != "" && !strings.Contains(l, ".") {
			label = l
			break
		}
	}
	if label == "" {
		return route{}, errors.New("no sandbox named: use Host <sandbox>." + p.cfg.Domain + ", <sandbox>.local or X-Tensorlake-Sandbox-Id")
	}
	if port, id, ok := splitPortRoute(label); ok {
		if port < 1 || port > 65535 {
			return route{}, errors.New("port out of range 1..65535")
		}
		if !ValidSandboxID(id) {
			return route{}, errors.New("host " + host + ": not a sandbox id")
		}
		return route{sandbox: id, port: port}, nil
	}
	if !ValidSandboxID(label) {
		return route{}, errors.New("host " + host + ": not a sandbox id (letters, digits, '-' and '_')")
	}
	return route{sandbox: label}, nil
}

// splitPortRoute parses "<port>-<sandbox>".
func splitPortRoute(label string) (int, string, bool) {
	ps, id, ok := strings.Cut(label, "-")
	if !ok || ps == "" || id == "" {
		return 0, "", false
	}
	for _, c := range ps {
		if c < '0' || c > '9' {
			return 0, "", false
		}
	}
	n, err := strconv.Atoi(ps)
	if err != nil {
		return 0, "", false
	}
	return n, id, true
}

// upstreamError maps failures of the uplink leg to the spec's statuses.
func (p *Proxy) upstreamError(w http.ResponseWriter, req *http.Request, err error) {
	var re *uplink.ReplyError
	cut, _ := req.Context().Value(bodyKey{}).(*progressBody)
	if cut.wasSpliced() {
		w.Header().Set("Connection", "close") // as ModifyResponse says it
	}
	switch {
	case errors.Is(err, errSpliced):
		// ModifyResponse wrote the response (spliceResponse).
	case errors.Is(err, errBodyTooSlow) || cut.wasCut():
		// The transport reports the cut body in its own words (a short
		// body, a canceled request), so the flag decides.
		log := reqid.Logger(req.Context(), p.log)
		log.Warn().Str("path", req.URL.Path).Str("remote", req.RemoteAddr).Msg("request body cut: below the minimum progress")
		httpx.WriteError(w, http.StatusRequestTimeout, "BODY_TOO_SLOW", fmt.Sprintf("the request body sent less than %d bytes in %v; the connection is closed", p.cfg.Limits.BodyMinBytes, p.cfg.Limits.BodyWindow))
	case errors.Is(err, ErrUnknownSandbox):
		httpx.WriteError(w, http.StatusNotFound, "SANDBOX_NOT_FOUND", "sandbox not found")
	case errors.Is(err, ErrNotConnected):
		httpx.WriteError(w, http.StatusServiceUnavailable, "SANDBOX_UNAVAILABLE", "sandbox is not connected")
	case errors.As(err, &re) && re.Status == uplink.StatusUnreachable:
		httpx.WriteError(w, http.StatusBadGateway, "PORT_UNREACHABLE", re.Msg)
	case errors.As(err, &re) && re.Status == uplink.StatusUnavailable:
		// The agent is at a limit (its stream caps) or shutting down: the
		// same request can succeed later.
		w.Header().Set("Retry-After", "1")
		httpx.WriteError(w, http.StatusServiceUnavailable, "SANDBOX_BUSY", re.Msg)
	case errors.Is(err, context.Canceled):
		// The client went away; nobody reads an answer.
	default:
		log := reqid.Logger(req.Context(), p.log)
		log.Warn().Err(err).Str("path", req.URL.Path).Msg("upstream error")
		httpx.WriteError(w, http.StatusBadGateway, "UPSTREAM_ERROR", "the sandbox did not answer: "+err.Error())
	}
}
