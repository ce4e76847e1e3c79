package agent

import (
	"bufio"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/hashicorp/yamux"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/internal/metrics"
	"github.com/tensorlake/tl-agent/internal/metrics/scrape"
	"github.com/tensorlake/tl-agent/internal/streams"
	"github.com/tensorlake/tl-agent/uplink"
)

// scrapeStream fetches the metrics over a metrics stream, as the proxy
// does, and keeps what the proxy's Sanitize keeps.
func scrapeStream(t *testing.T, up *yamux.Session) map[string]*dto.MetricFamily {
	t.Helper()
	c, err := open(t, up, uplink.Header{Kind: uplink.KindMetrics})
	if err != nil {
		t.Fatalf("metrics stream refused: %v", err)
	}
	defer c.Close()
	mfs, rep, err := scrape.Sanitize(c, "sbx", scrape.DefaultBounds())
	if err != nil {
		t.Fatalf("the agent's metrics do not parse: %v", err)
	}
	if rep.Dropped != 0 {
		t.Errorf("the proxy drops %d of the agent's own series: a family is not declared as emitted", rep.Dropped)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// value is the value of the series of mf whose labels include want.
func value(mf *dto.MetricFamily, want map[string]string) (float64, bool) {
	if mf == nil {
		return 0, false
	}
next:
	for _, m := range mf.Metric {
		for _, l := range m.Label {
			if v, ok := want[l.GetName()]; ok && v != l.GetValue() {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

// TestMetricsStream: the metrics stream answers the agent's metrics, which
// count streams by kind and API requests by route pattern (not path), and
// the status shows the same counts.
func TestMetricsStream(t *testing.T) {
	a := New(Config{}, zerolog.Nop(), "test", Parts{Streams: map[string]streams.Server{uplink.KindSFTP: &echoServer{name: "sftp"}}})
	up := pipeUplink(t, a)
	for _, path := range []string{"/api/v1/health", "/api/v1/health", "/no/such/a", "/no/such/b"} {
		c, err := open(t, up, uplink.Header{Kind: uplink.KindAPI})
		if err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest("GET", "http://agent"+path, nil)
		_ = req.Write(c)
		resp, err := http.ReadResponse(bufio.NewReader(c), req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		c.Close()
	}
	c, err := open(t, up, uplink.Header{Kind: uplink.KindSFTP})
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.WriteString(c, "0123456789\n")
	_, _ = bufio.NewReader(c).ReadString('\n')
	c.Close()

	mfs := scrapeStream(t, up)
	rules := []struct {
		rule   string
		family string
		labels map[string]string
		want   float64
	}{
		{"api requests count by route pattern", metrics.APIRequestDuration, map[string]string{"route": "GET /api/v1/health", "code": "200"}, 2},
		{"unmatched paths share one route label", metrics.APIRequestDuration, map[string]string{"route": "unmatched", "code": "404"}, 2},
		{"streams opened count by kind", "tl_agent_streams_opened_total", map[string]string{"kind": "api"}, 4},
		{"bytes in count the stream's payload", "tl_agent_stream_bytes_total", map[string]string{"kind": "sftp", "direction": "in"}, 11},
		{"bytes out count the reply and the answer", "tl_agent_stream_bytes_total", map[string]string{"kind": "sftp", "direction": "out"}, 3 + 16},
		{"the scrape's own stream is counted open", "tl_agent_streams_open", map[string]string{"kind": "metrics"}, 1},
	}
	for _, r := range rules {
		got, ok := value(mfs[r.family], r.labels)
		if !ok || got != r.want {
			t.Errorf("%s: %s%v = %v (present %v), want %v", r.rule, r.family, r.labels, got, ok, r.want)
		}
	}
	for _, mf := range mfs {
		for _, m := range mf.Metric {
			for _, l := range m.Label {
				if strings.Contains(l.GetValue(), "/no/such") {
					t.Errorf("a path became a label value: %s %s", mf.GetName(), l.GetValue())
				}
			}
		}
	}
	st := a.Status()
	if st.APIRequests["200"] != 2 || st.APIRequests["404"] != 2 || st.Streams["api"].Opened != 4 {
		t.Errorf("the status disagrees with the metrics: api %v, streams %+v", st.APIRequests, st.Streams)
	}
}

// The API's status recorder keeps what handlers use of the server's
// ResponseWriter: a WebSocket hijacks, an event stream flushes, a download
// copies with ReadFrom, deadlines go through http.ResponseController.
func TestStatusWriterKeepsInterfaces(t *testing.T) {
	var w http.ResponseWriter = &statusWriter{ResponseWriter: httptest.NewRecorder()}
	if _, ok := w.(http.Hijacker); !ok {
		t.Error("no http.Hijacker")
	}
	if _, ok := w.(http.Flusher); !ok {
		t.Error("no http.Flusher")
	}
	if _, ok := w.(io.ReaderFrom); !ok {
		t.Error("no io.ReaderFrom")
	}
	if n, err := w.(io.ReaderFrom).ReadFrom(strings.NewReader("body")); n != 4 || err != nil {
		t.Errorf("ReadFrom: %d, %v", n, err)
	}
	if got := w.(*statusWriter).status; got != http.StatusOK {
		t.Errorf("status after a body: %d", got)
	}
	if _, _, err := w.(http.Hijacker).Hijack(); err == nil {
		t.Error("a recorder cannot be hijacked, and the wrapper said it could")
	}
	if statusCode(0) != "200" || statusCode(101) != "101" || statusCode(999) != "unknown" {
		t.Error("status code labels")
	}
}
