package metrics

import (
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// What Write prints is Prometheus' text format as Prometheus' own parser
// reads it: types, helps, escaped label values, cumulative buckets.
func TestWriteParses(t *testing.T) {
	e := NewEmitter()
	e.Gauge("tl_agent_info", 1, "v1 \"quoted\" back\\slash\nnewline")
	e.Counter("tl_agent_streams_opened_total", 3, "ssh")
	e.Counter("tl_agent_streams_opened_total", 5, "api")
	h := NewAPIHistogram()
	for _, v := range []float64{0.001, 0.005, 0.02, 100} {
		h.Observe(v, "GET /api/v1/health", "200")
	}
	h.Observe(0.3, "POST /api/v1/processes", "503")
	var out strings.Builder
	if err := e.Write(&out, h); err != nil {
		t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(out.String()))
	if err != nil {
		t.Fatalf("does not parse: %v\n%s", err, out.String())
	}
	info := fams["tl_agent_info"]
	if info.GetType() != dto.MetricType_GAUGE || info.GetHelp() != Lookup("tl_agent_info").Help ||
		info.Metric[0].Label[0].GetValue() != "v1 \"quoted\" back\\slash\nnewline" {
		t.Errorf("tl_agent_info: %v", info)
	}
	opened := fams["tl_agent_streams_opened_total"]
	if opened.GetType() != dto.MetricType_COUNTER || len(opened.Metric) != 2 ||
		opened.Metric[0].Label[0].GetValue() != "api" || opened.Metric[0].Counter.GetValue() != 5 {
		t.Errorf("streams opened (sorted by kind): %v", opened)
	}
	api := fams[APIRequestDuration]
	if api.GetType() != dto.MetricType_HISTOGRAM || len(api.Metric) != 2 {
		t.Fatalf("api histogram: %v", api)
	}
	health := api.Metric[0].Histogram
	if health.GetSampleCount() != 4 || health.GetSampleSum() != 100.026 {
		t.Errorf("health: count %d sum %v", health.GetSampleCount(), health.GetSampleSum())
	}
	// le=0.005 holds 0.001 and 0.005 (upper bounds are inclusive), 0.025
	// adds 0.02; 100 is beyond the last bound.
	want := map[float64]uint64{0.005: 2, 0.01: 2, 0.025: 3, 60: 3}
	for _, b := range health.Bucket {
		if n, ok := want[b.GetUpperBound()]; ok && b.GetCumulativeCount() != n {
			t.Errorf("bucket le=%v: %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), n)
		}
	}
	if got := h.Counts("code"); got["200"] != 4 || got["503"] != 1 {
		t.Errorf("counts by code: %v", got)
	}
	if _, ok := fams["tl_agent_goroutines"]; ok {
		t.Error("a family without a series was written")
	}
}

// A family that is not declared, or the wrong label count, is a bug.
func TestEmitterRefusesUndeclared(t *testing.T) {
	for _, f := range []func(e *Emitter){
		func(e *Emitter) { e.Gauge("tl_agent_nope", 1) },
		func(e *Emitter) { e.Counter("tl_agent_info", 1, "v") }, // a gauge
		func(e *Emitter) { e.Gauge("tl_agent_info", 1) },        // one label missing
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Error("no panic")
				}
			}()
			f(NewEmitter())
		}()
	}
}
