package proxy

import (
	"context"
	"crypto/subtle"
	"errors"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"

	"github.com/tensorlake/tl-agent/internal/httpx"
	metrics "github.com/tensorlake/tl-agent/internal/metrics/scrape"
	"github.com/tensorlake/tl-agent/uplink"
)

// The operator door (--operator-addr) is a listener of its own, never the
// users' front door, with its own credential (Config.OperatorKeys). It
// serves GET /metrics: the proxy's own metrics and every connected
// agent's, fetched over the uplink at each scrape (a metrics stream, which
// no user route can open), labelled with the sandbox. An agent is
// untrusted here (a sandbox's root may replace it): its answer is bounded
// in time and bytes, and only the families internal/metrics declares
// survive, so it can neither stall the scrape nor speak for another
// sandbox.

// Operator door bounds (docs/observability.md).
const (
	// AgentScrapeTimeout bounds one agent's answer, from opening the stream.
	AgentScrapeTimeout = 2 * time.Second
	// AgentScrapeParallel is how many agents are asked at once.
	AgentScrapeParallel = 16
	// ScrapeBudget bounds a whole scrape when Prometheus sends no
	// X-Prometheus-Scrape-Timeout-Seconds; agents not asked by then are
	// reported down (reason skipped).
	ScrapeBudget = 10 * time.Second
	// OperatorConns caps the operator listener's connections.
	OperatorConns = 64
)

// operatorDoor is the door's state: one scrape runs at a time (a second
// waits within its own deadline), so scrapes cannot multiply the load on
// the agents.
type operatorDoor struct {
	scrape chan struct{} // cap 1: the scrape slot
	bounds metrics.Bounds
	// agentTimeout is AgentScrapeTimeout; a field so tests can shorten it.
	agentTimeout time.Duration
}

func newOperatorDoor() *operatorDoor {
	return &operatorDoor{scrape: make(chan struct{}, 1), bounds: metrics.DefaultBounds(), agentTimeout: AgentScrapeTimeout}
}

// OperatorHandler serves the operator door on a listener at addr; open
// says whether it may answer without a key (OperatorOpenLoopback on a
// loopback address).
func (p *Proxy) OperatorHandler(open bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", p.handleMetrics)
	p.lifecycleRoutes(mux) // lifecycle.go
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		httpx.WriteError(w, http.StatusNotFound, "NOT_FOUND", "the operator door serves GET /metrics")
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !open && !p.operatorKey(r) {
			httpx.WriteError(w, http.StatusUnauthorized, "UNAUTHORIZED", "missing or invalid operator key: send Authorization: Bearer <operator key>")
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// OperatorOpen reports whether the operator door on ln may answer without
// a key: only when the config says so and ln is on a loopback address.
func (p *Proxy) OperatorOpen(ln net.Listener) bool {
	a, ok := ln.Addr().(*net.TCPAddr)
	return p.cfg.OperatorOpenLoopback && ok && a.IP.IsLoopback()
}

// operatorKey reports whether r carries one of the operator keys.
func (p *Proxy) operatorKey(r *http.Request) bool {
	key, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || key == "" {
		return false
	}
	found := false
	for k := range p.cfg.OperatorKeys {
		if subtle.ConstantTimeCompare([]byte(k), []byte(key)) == 1 {
			found = true
		}
	}
	return found
}

// handleMetrics is one scrape.
func (p *Proxy) handleMetrics(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), scrapeBudget(r))
	defer cancel()
	select {
	case p.operator.scrape <- struct{}{}:
		defer func() { <-p.operator.scrape }()
	case <-ctx.Done():
		httpx.WriteError(w, http.StatusServiceUnavailable, "SCRAPE_BUSY", "another scrape is running; retry")
		return
	}
	// The agents first: their fetches' failures count in the proxy's own
	// registry, gathered after, so this scrape shows them.
	g := prometheus.Gatherers{agentGatherer{p: p, ctx: ctx}, p.met.reg}
	promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}).ServeHTTP(w, r)
}

// scrapeBudget is the time a scrape may take: Prometheus's own timeout
// (less a margin for encoding), at most ScrapeBudget.
func scrapeBudget(r *http.Request) time.Duration {
	if s, err := strconv.ParseFloat(r.Header.Get("X-Prometheus-Scrape-Timeout-Seconds"), 64); err == nil && s > 0 {
		d := time.Duration(s*float64(time.Second)) - 250*time.Millisecond
		return max(min(d, ScrapeBudget), 100*time.Millisecond)
	}
	return ScrapeBudget
}

// agentGatherer fetches every connected agent's metrics for one scrape.
type agentGatherer struct {
	p   *Proxy
	ctx context.Context
}

func (g agentGatherer) Gather() ([]*dto.MetricFamily, error) {
	var ids []string
	for _, s := range g.p.reg.Snapshot(nil) {
		if s.Connected {
			ids = append(ids, s.ID)
		}
	}
	results := make([][]*dto.MetricFamily, len(ids))
	up := make([]bool, len(ids))
	sem := make(chan struct{}, AgentScrapeParallel)
	var wg sync.WaitGroup
	for i, id := range ids {
		slot := false
		select {
		case sem <- struct{}{}:
			slot = true
		case <-g.ctx.Done():
		}
		// A slot freed by fetches that ended at the budget's deadline can
		// be seen before the budget's own timer has run: a slot taken at
		// or past the deadline is given back, and the agent skipped.
		if !slot || g.spent() {
			if slot {
				<-sem
			}
			g.p.met.scrapeErrs.WithLabelValues("skipped").Inc()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			results[i], up[i] = g.fetch(id)
		}()
	}
	wg.Wait()
	var out []*dto.MetricFamily
	upFamily := &dto.MetricFamily{Name: proto.String("tl_proxy_agent_up"), Type: dto.MetricType_GAUGE.Enum(),
		Help: proto.String("1 when the sandbox's agent answered this scrape's metrics fetch in time and within bounds, else 0.")}
	for i, id := range ids {
		out = append(out, results[i]...)
		v := 0.0
		if up[i] {
			v = 1
		}
		upFamily.Metric = append(upFamily.Metric, &dto.Metric{
			Label: []*dto.LabelPair{{Name: proto.String(metrics.SandboxLabel), Value: proto.String(id)}},
			Gauge: &dto.Gauge{Value: proto.Float64(v)},
		})
	}
	if len(upFamily.Metric) > 0 {
		out = append(out, upFamily)
	}
	return out, nil
}

// spent says whether the scrape's budget is used up.
func (g agentGatherer) spent() bool {
	if g.ctx.Err() != nil {
		return true
	}
	d, ok := g.ctx.Deadline()
	return ok && !time.Now().Before(d)
}

// fetch asks one agent, within AgentScrapeTimeout and the scrape's
// deadline, and keeps what Sanitize allows.
func (g agentGatherer) fetch(id string) ([]*dto.MetricFamily, bool) {
	ctx, cancel := context.WithTimeout(g.ctx, g.p.operator.agentTimeout)
	defer cancel()
	c, err := g.p.reg.Open(ctx, id, uplink.Header{Kind: uplink.KindMetrics})
	if err != nil {
		g.fail(id, "unavailable", err)
		return nil, false
	}
	defer c.Close()
	d, _ := ctx.Deadline()
	_ = c.SetReadDeadline(d)
	stop := context.AfterFunc(ctx, func() { _ = c.SetReadDeadline(time.Now()) })
	defer stop()
	mfs, rep, err := metrics.Sanitize(c, id, g.p.operator.bounds)
	switch {
	case errors.Is(err, metrics.ErrTooLarge):
		g.fail(id, "too_large", err)
		return nil, false
	case isTimeout(err) || ctx.Err() != nil:
		g.fail(id, "timeout", err)
		return nil, false
	case err != nil:
		g.fail(id, "unparsable", err)
		return nil, false
	}
	if rep.Dropped > 0 {
		g.p.log.Debug().Str("sandbox", id).Int("dropped", rep.Dropped).Msg("agent metrics: series dropped by the bounds")
	}
	return mfs, true
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

func (g agentGatherer) fail(id, reason string, err error) {
	g.p.met.scrapeErrs.WithLabelValues(reason).Inc()
	g.p.log.Info().Str("sandbox", id).Str("reason", reason).Err(err).Msg("agent metrics not fetched")
}
