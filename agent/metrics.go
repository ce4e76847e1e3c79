package agent

import (
	"context"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/internal/httpx"
	"github.com/tensorlake/tl-agent/internal/metrics"
	"github.com/tensorlake/tl-agent/uplink"
)

// agentMetrics owns the agent's Prometheus registry. Every figure but the
// API latency histogram is read from the agent's Status when scraped (the
// one source `tl-agent status` prints too), so the two never disagree;
// the families are declared once, in internal/metrics.
type agentMetrics struct {
	reg      *prometheus.Registry
	api      *prometheus.HistogramVec // route, code
	handlers sync.Map                 // route pattern -> instrumented handler
	streams  streamCounters
}

func newAgentMetrics(a *Agent) *agentMetrics {
	m := &agentMetrics{reg: prometheus.NewRegistry(), api: metrics.NewAPIHistogram(), streams: newStreamCounters()}
	m.reg.MustRegister(m.api, statusCollector{a})
	return m
}

// statusCollector turns the agent's Status into metrics at each scrape. It
// describes nothing up front (an unchecked collector): the families are
// internal/metrics' and tested there.
type statusCollector struct{ a *Agent }

func (statusCollector) Describe(chan<- *prometheus.Desc) {}

func (c statusCollector) Collect(ch chan<- prometheus.Metric) {
	emitStatus(metrics.Emitter(ch), c.a.Status(), c.a.started)
}

// instrumentAPI wraps the API router: each request is observed under its
// route pattern (a fixed set: the router's), never its path.
// It serves through httpx.Routes (404 and 405 in the spec's shape).
func (m *agentMetrics) instrumentAPI(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, pattern := mux.Handler(r)
		if pattern == "" || pattern == "/" {
			pattern = "unmatched"
		}
		h, ok := m.handlers.Load(pattern)
		if !ok {
			obs := m.api.MustCurryWith(prometheus.Labels{"route": pattern})
			h, _ = m.handlers.LoadOrStore(pattern, promhttp.InstrumentHandlerDuration(obs, httpx.Routes(mux)))
		}
		h.(http.Handler).ServeHTTP(w, r)
	})
}

// apiCounts sums the API histogram's requests by status code, for the
// status.
func (m *agentMetrics) apiCounts() map[string]int64 {
	ch := make(chan prometheus.Metric, 16)
	go func() { m.api.Collect(ch); close(ch) }()
	out := map[string]int64{}
	for pm := range ch {
		var d dto.Metric
		if pm.Write(&d) != nil || d.Histogram == nil {
			continue
		}
		for _, l := range d.Label {
			if l.GetName() == "code" {
				out[l.GetValue()] += int64(d.Histogram.GetSampleCount())
			}
		}
	}
	return out
}

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
	if err := a.writeMetrics(c, expfmt.NewFormat(expfmt.TypeTextPlain)); err != nil {
		log.Debug().Err(err).Msg("metrics not sent")
	}
}

// writeMetrics writes every metric in format f.
func (a *Agent) writeMetrics(w interface{ Write([]byte) (int, error) }, f expfmt.Format) error {
	mfs, err := a.met.reg.Gather()
	if err != nil {
		return err
	}
	enc := expfmt.NewEncoder(w, f)
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			return err
		}
	}
	return nil
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
