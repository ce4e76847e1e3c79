package agent

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/internal/httpx"
	"github.com/tensorlake/tl-agent/internal/metrics"
	"github.com/tensorlake/tl-agent/uplink"
)

// agentMetrics are the agent's metrics. Every figure but the API latency
// histogram is read from the agent's Status when scraped (the one source
// `tl-agent status` prints too), so the two never disagree; the families
// are declared once, in internal/metrics, which writes the text format
// itself (no Prometheus library in the agent binary: see that package).
type agentMetrics struct {
	a       *Agent
	api     *metrics.HistogramVec // route, code
	streams streamCounters
}

func newAgentMetrics(a *Agent) *agentMetrics {
	return &agentMetrics{a: a, api: metrics.NewAPIHistogram(), streams: newStreamCounters()}
}

// instrumentAPI wraps the API router: each request is observed under its
// route pattern (a fixed set: the router's), never its path, and the
// status code it answered, for its whole life (a WebSocket's too).
// It serves through httpx.Routes (404 and 405 in the spec's shape).
func (m *agentMetrics) instrumentAPI(mux *http.ServeMux) http.Handler {
	routes := httpx.Routes(mux)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, pattern := mux.Handler(r)
		if pattern == "" || pattern == "/" {
			pattern = "unmatched"
		}
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		routes.ServeHTTP(sw, r)
		m.api.Observe(time.Since(start).Seconds(), pattern, statusCode(sw.status))
	})
}

// statusCode is the code label of a status: 200 when none was written
// (as promhttp counted), "unknown" outside 100-599.
func statusCode(s int) string {
	switch {
	case s == 0:
		return "200"
	case s >= 100 && s <= 599:
		return strconv.Itoa(s)
	}
	return "unknown"
}

// statusWriter records the status a handler answered. It keeps what the
// handlers use of the server's ResponseWriter: Flush (event streams),
// Hijack (WebSockets), ReadFrom (downloads) and Unwrap
// (http.ResponseController).
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if h, ok := w.ResponseWriter.(http.Hijacker); ok {
		return h.Hijack()
	}
	return nil, nil, http.ErrNotSupported
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// ReadFrom keeps the server's own io.ReaderFrom for io.Copy to the
// response (a file download), as promhttp's wrapper did.
func (w *statusWriter) ReadFrom(r io.Reader) (int64, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(w.ResponseWriter, r)
}

// apiCounts sums the API histogram's requests by status code, for the
// status.
func (m *agentMetrics) apiCounts() map[string]int64 { return m.api.Counts("code") }

// metricsWriteTimeout bounds writing the metrics to the proxy.
const metricsWriteTimeout = 5 * time.Second

// serveMetrics answers a metrics stream (the proxy's operator door
// scraping): OK, the metrics in text format, then close.
func (a *Agent) serveMetrics(_ context.Context, c *countedConn, _ uplink.Header, _ *streamLimits, log zerolog.Logger) {
	defer c.Close()
	_ = c.SetWriteDeadline(time.Now().Add(metricsWriteTimeout))
	if uplink.WriteReply(c, uplink.StatusOK, "") != nil {
		return
	}
	if err := a.writeMetrics(c); err != nil {
		log.Debug().Err(err).Msg("metrics not sent")
	}
}

// writeMetrics writes every metric in Prometheus' text format.
func (a *Agent) writeMetrics(w io.Writer) error {
	e := metrics.NewEmitter()
	emitStatus(e, a.Status(), a.started)
	return e.Write(w, a.met.api)
}

// streamKinds are the kinds counted by name; any other is "other".
var streamKinds = []string{uplink.KindAPI, uplink.KindSSH, uplink.KindSFTP, uplink.KindTCP, uplink.KindUnix, uplink.KindMetrics, "other"}

// kindCounters are one stream kind's counts.
type kindCounters struct{ open, opened, in, out atomic.Int64 }

// streamCounters are the uplink streams' counts by kind, over every
// session; the map is built once and never written.
type streamCounters map[string]*kindCounters

func newStreamCounters() streamCounters {
	m := streamCounters{}
	for _, k := range streamKinds {
		m[k] = &kindCounters{}
	}
	return m
}

// opened counts a stream of kind and returns its counters.
func (s streamCounters) opened(kind string) *kindCounters {
	k := s[kind]
	if k == nil {
		k = s["other"]
	}
	k.opened.Add(1)
	k.open.Add(1)
	return k
}

// StreamStats are one stream kind's counts in the status.
type StreamStats struct {
	BytesIn  int64 `json:"bytes_in"`  // from the proxy
	BytesOut int64 `json:"bytes_out"` // to the proxy
	Open     int64 `json:"open"`
	Opened   int64 `json:"opened"`
}

func (s streamCounters) snapshot() map[string]StreamStats {
	out := make(map[string]StreamStats, len(s))
	for k, c := range s {
		out[k] = StreamStats{BytesIn: c.in.Load(), BytesOut: c.out.Load(), Open: c.open.Load(), Opened: c.opened.Load()}
	}
	return out
}

// selfUsage is the agent's own resident memory and open fds, -1 when
// /proc cannot tell.
func selfUsage() (rss int64, fds int) {
	rss, fds = -1, -1
	if b, err := os.ReadFile("/proc/self/statm"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 1 {
			if pages, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				rss = pages * int64(os.Getpagesize())
			}
		}
	}
	if d, err := os.Open("/proc/self/fd"); err == nil {
		names, _ := d.Readdirnames(-1)
		d.Close()
		fds = len(names) - 1 // the folder's own fd
	}
	return rss, fds
}
