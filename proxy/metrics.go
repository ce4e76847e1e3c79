package proxy

import (
	"io"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tensorlake/tl-agent/internal/relay"
)

// proxyMetrics owns the proxy's own Prometheus registry (the operator door
// serves it beside the agents' metrics, operator.go). Labels are small
// fixed sets; only tl_proxy_sandbox_connected and tl_proxy_agent_up carry
// the sandbox, one series per configured sandbox.
type proxyMetrics struct {
	reg        *prometheus.Registry
	handshakes *prometheus.CounterVec   // result
	frontHist  *prometheus.HistogramVec // route, code
	relayed    *prometheus.CounterVec   // kind, direction
	spliced    *prometheus.CounterVec   // kind, direction
	sshLogins  *prometheus.CounterVec   // result
	scrapeErrs *prometheus.CounterVec   // reason
}

// Route kinds of the front door's requests.
const (
	routeAPI    = "api"    // the agent's API
	routePort   = "port"   // a port inside the sandbox
	routeStatus = "status" // the proxy's own GET /_proxy/sandboxes
	routeNone   = "none"   // no sandbox named (400)
)

// Handshake results, as tl_proxy_uplink_handshakes_total counts them.
const (
	hsOK            = "ok"
	hsBadHello      = "bad_hello"
	hsBadVersion    = "bad_version"
	hsBadCredential = "bad_credentials" // wrong token or proof, unknown id or link secret
	hsDuplicate     = "duplicate"       // the sandbox has a live link, or was just seen
	hsResumeRefused = "resume_refused"
	hsError         = "error" // the connection failed during it
)

func newProxyMetrics(r *Registry) *proxyMetrics {
	m := &proxyMetrics{
		reg: prometheus.NewRegistry(),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tl_proxy_uplink_handshakes_total",
			Help: "Uplink handshakes by result (ok, bad_hello, bad_version, bad_credentials, duplicate, resume_refused, error)."}, []string{"result"}),
		frontHist: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "tl_proxy_http_request_duration_seconds",
			Help:    "Front door requests by route kind (api, port, status, none) and status code, and how long they took (WebSockets and event streams: their whole life).",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}}, []string{"route", "code"}),
		relayed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tl_proxy_relayed_bytes_total",
			Help: "Bytes relayed over uplink streams by stream kind; direction to_sandbox or from_sandbox."}, []string{"kind", "direction"}),
		spliced: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tl_proxy_spliced_bytes_total",
			Help: "The part of tl_proxy_relayed_bytes_total spliced between the client's socket and the uplink's, never copied through the proxy (bodies of 1 MiB or more), by stream kind and direction."}, []string{"kind", "direction"}),
		sshLogins: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tl_proxy_ssh_logins_total",
			Help: "SSH front door logins by result (ok, denied: key or route refused, failed: handshake ended before a decision)."}, []string{"result"}),
		scrapeErrs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tl_proxy_agent_scrape_errors_total",
			Help: "Agent metrics fetches that failed, by reason (timeout, too_large, unparsable, unavailable, skipped)."}, []string{"reason"}),
	}
	m.reg.MustRegister(m.handshakes, m.frontHist, m.relayed, m.spliced, m.sshLogins, m.scrapeErrs, registryCollector{r},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// instrumentFront observes every front door request under its route kind.
func (m *proxyMetrics) instrumentFront(next http.Handler, kindOf func(*http.Request) string) http.Handler {
	byKind := map[string]http.Handler{} // built once, only read after
	for _, k := range []string{routeAPI, routePort, routeStatus, routeNone} {
		byKind[k] = promhttp.InstrumentHandlerDuration(m.frontHist.MustCurryWith(prometheus.Labels{"route": k}), next)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		byKind[kindOf(req)].ServeHTTP(w, req)
	})
}

// routeKind is the route kind of req, for the metrics.
func (p *Proxy) routeKind(req *http.Request) string {
	if req.URL.Path == "/_proxy/sandboxes" {
		return routeStatus
	}
	r, err := p.selectRoute(req)
	switch {
	case err != nil:
		return routeNone
	case r.port != 0:
		return routePort
	}
	return routeAPI
}

// registryCollector reports the registry's sandboxes when scraped.
type registryCollector struct{ r *Registry }

var (
	descKnown     = prometheus.NewDesc("tl_proxy_sandboxes_known", "Sandboxes in the proxy's config.", nil, nil)
	descConnected = prometheus.NewDesc("tl_proxy_sandboxes_connected", "Sandboxes with a live uplink.", nil, nil)
	descSandbox   = prometheus.NewDesc("tl_proxy_sandbox_connected", "1 while the sandbox has a live uplink, else 0.", []string{"sandbox"}, nil)
)

func (registryCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descKnown
	ch <- descConnected
	ch <- descSandbox
}

func (c registryCollector) Collect(ch chan<- prometheus.Metric) {
	all := c.r.Snapshot(nil)
	n := 0
	for _, s := range all {
		v := 0.0
		if s.Connected {
			v, n = 1, n+1
		}
		ch <- prometheus.MustNewConstMetric(descSandbox, prometheus.GaugeValue, v, s.ID)
	}
	ch <- prometheus.MustNewConstMetric(descKnown, prometheus.GaugeValue, float64(len(all)))
	ch <- prometheus.MustNewConstMetric(descConnected, prometheus.GaugeValue, float64(n))
}

// relayCounter counts a stream's bytes in the relayed counters of its
// kind. Half-close passes through.
type relayCounter struct {
	net.Conn
	to, from prometheus.Counter
	spliced  prometheus.Counter
}

func (m *proxyMetrics) countStream(c net.Conn, kind string) net.Conn {
	return &relayCounter{Conn: c, to: m.relayed.WithLabelValues(kind, "to_sandbox"), from: m.relayed.WithLabelValues(kind, "from_sandbox"),
		spliced: m.spliced.WithLabelValues(kind, "from_sandbox")}
}

func (c *relayCounter) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.from.Add(float64(n))
	}
	return n, err
}

func (c *relayCounter) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if n > 0 {
		c.to.Add(float64(n))
	}
	return n, err
}

// SinkTo passes the stream's SinkTo through (the port route's upgraded
// connection, upgradedBody), counted as reads are.
func (c *relayCounter) SinkTo(w io.Writer, try func([]byte) int, buf []byte) (int64, error) {
	n, sunk, err := relay.SinkThrough(c.Conn, c, w, try, buf)
	if sunk && n > 0 {
		c.from.Add(float64(n))
	}
	return n, err
}

// ReadFrom lets the transport's request-body copy reach the stream's own
// ReadFrom (256 KiB reads, frames sized to the link) instead of
// io.Copy's 32 KiB steps: an upload is read from the client and framed
// onto the uplink in big steps.
func (c *relayCounter) ReadFrom(r io.Reader) (int64, error) {
	n, err := relay.ReadFromThrough(c.Conn, r)
	if n > 0 {
		c.to.Add(float64(n))
	}
	return n, err
}

// SpliceTo passes the stream's SpliceTo through (splicedBody), counted
// as reads are, the spliced share in tl_proxy_spliced_bytes_total too.
func (c *relayCounter) SpliceTo(dst net.Conn, n int64, stall time.Duration) (int64, int64, error) {
	s, ok := c.Conn.(splicer)
	if !ok {
		m, err := io.CopyN(dst, struct{ io.Reader }{c}, n)
		return m, 0, err
	}
	m, spliced, err := s.SpliceTo(dst, n, stall)
	if m > 0 {
		c.from.Add(float64(m))
	}
	if spliced > 0 {
		c.spliced.Add(float64(spliced))
	}
	return m, spliced, err
}

// Shrink passes yamux's Shrink through (idleShrinker).
func (c *relayCounter) Shrink() {
	if s, ok := c.Conn.(interface{ Shrink() }); ok {
		s.Shrink()
	}
}

func (c *relayCounter) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// sshLogin counts one SSH front door handshake's result: ok, denied (a
// key or route was refused), failed (ended before any decision).
func (m *proxyMetrics) sshLogin(err error, denied bool) {
	result := "ok"
	switch {
	case err != nil && denied:
		result = "denied"
	case err != nil:
		result = "failed"
	}
	m.sshLogins.WithLabelValues(result).Inc()
}
