package scrape

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/tensorlake/tl-agent/internal/metrics"
)

func series(mfs []*dto.MetricFamily) map[string]string {
	out := map[string]string{}
	for _, mf := range mfs {
		for _, m := range mf.Metric {
			var ls []string
			for _, l := range m.Label {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			v := ""
			switch {
			case m.Counter != nil:
				v = fmt.Sprint(m.Counter.GetValue())
			case m.Gauge != nil:
				v = fmt.Sprint(m.Gauge.GetValue())
			case m.Histogram != nil:
				v = fmt.Sprint(m.Histogram.GetSampleCount())
			}
			out[mf.GetName()+"{"+strings.Join(ls, ",")+"}"] = v
		}
	}
	return out
}

// typed adds the declared TYPE line before the first sample of each
// declared family that has none, as the agent's encoder writes them.
func typed(in string) string {
	var out strings.Builder
	done := map[string]bool{}
	for _, line := range strings.SplitAfter(in, "\n") {
		if strings.HasPrefix(line, "# TYPE ") {
			done[strings.Fields(line)[2]] = true
		}
		name, _, _ := strings.Cut(line, "{")
		name, _, _ = strings.Cut(name, " ")
		if f := metrics.Lookup(name); f != nil && !done[name] {
			done[name] = true
			fmt.Fprintf(&out, "# TYPE %s %s\n", name, f.Type)
		}
		out.WriteString(line)
	}
	return out.String()
}

// TestSanitizeRules: what an agent's answer may contribute to a scrape.
func TestSanitizeRules(t *testing.T) {
	b := DefaultBounds()
	for _, tc := range []struct {
		rule, in string
		want     map[string]string
	}{
		{"a declared family is kept with the sandbox label",
			"tl_agent_uplink_reconnects_total 3\n",
			map[string]string{"tl_agent_uplink_reconnects_total{sandbox=sbx}": "3"}},
		{"labels are put in their declared order",
			`tl_agent_stream_bytes_total{direction="in",kind="api"} 5` + "\n",
			map[string]string{"tl_agent_stream_bytes_total{kind=api,direction=in,sandbox=sbx}": "5"}},
		{"a forged sandbox label drops the series",
			`tl_agent_uplink_reconnects_total{sandbox="other"} 9` + "\n" + `tl_agent_streams_open{kind="api",sandbox="other"} 1` + "\n",
			map[string]string{}},
		{"an undeclared family is dropped",
			"# TYPE go_goroutines gauge\ngo_goroutines 7\nup 1\ntl_agent_bogus 1\n",
			map[string]string{}},
		{"a family of the wrong type is dropped",
			"# TYPE tl_agent_uplink_reconnects_total gauge\ntl_agent_uplink_reconnects_total 3\n",
			map[string]string{}},
		{"an extra or missing label drops the series",
			`tl_agent_streams_open{kind="api",x="y"} 1` + "\n" + `tl_agent_streams_opened_total 2` + "\n" + `tl_agent_streams_open{kind="ssh"} 4` + "\n",
			map[string]string{"tl_agent_streams_open{kind=ssh,sandbox=sbx}": "4"}},
		{"an overlong label value drops the series",
			`tl_agent_streams_open{kind="` + strings.Repeat("k", 200) + `"} 1` + "\n",
			map[string]string{}},
		{"a histogram is kept whole",
			"# TYPE tl_agent_api_request_duration_seconds histogram\n" +
				`tl_agent_api_request_duration_seconds_bucket{route="GET /x",code="200",le="1"} 2` + "\n" +
				`tl_agent_api_request_duration_seconds_bucket{route="GET /x",code="200",le="+Inf"} 2` + "\n" +
				`tl_agent_api_request_duration_seconds_sum{route="GET /x",code="200"} 0.5` + "\n" +
				`tl_agent_api_request_duration_seconds_count{route="GET /x",code="200"} 2` + "\n",
			map[string]string{"tl_agent_api_request_duration_seconds{route=GET /x,code=200,sandbox=sbx}": "2"}},
		{"timestamps are dropped and values kept",
			"tl_agent_goroutines 12 1700000000000\n",
			map[string]string{"tl_agent_goroutines{sandbox=sbx}": "12"}},
	} {
		t.Run(tc.rule, func(t *testing.T) {
			mfs, _, err := Sanitize(strings.NewReader(typed(tc.in)), "sbx", b)
			if err != nil {
				t.Fatal(err)
			}
			got := series(mfs)
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			for _, mf := range mfs {
				if mf.GetHelp() != metrics.Lookup(mf.GetName()).Help {
					t.Fatalf("help of %s is the agent's, not the declared one", mf.GetName())
				}
				for _, m := range mf.Metric {
					if m.TimestampMs != nil {
						t.Fatalf("a timestamp was kept")
					}
				}
			}
		})
	}
}

// TestSanitizeBounds: size, series count and garbage.
func TestSanitizeBounds(t *testing.T) {
	t.Run("an answer over MaxBytes is refused whole", func(t *testing.T) {
		b := DefaultBounds()
		b.MaxBytes = 100
		_, _, err := Sanitize(strings.NewReader(strings.Repeat("tl_agent_goroutines 1\n", 10)), "sbx", b)
		if !errors.Is(err, ErrTooLarge) {
			t.Fatalf("err %v, want ErrTooLarge", err)
		}
	})
	t.Run("series beyond MaxSeries are dropped", func(t *testing.T) {
		b := DefaultBounds()
		b.MaxSeries = 10
		var in strings.Builder
		for i := range 100 {
			fmt.Fprintf(&in, "tl_agent_streams_open{kind=\"k%d\"} 1\n", i)
		}
		mfs, rep, err := Sanitize(strings.NewReader(typed(in.String())), "sbx", b)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(series(mfs)); n != 10 || rep.Dropped != 90 {
			t.Fatalf("kept %d (report %+v), want 10 kept and 90 dropped", n, rep)
		}
	})
	t.Run("duplicate series count once", func(t *testing.T) {
		mfs, _, err := Sanitize(strings.NewReader(typed("tl_agent_goroutines 1\ntl_agent_goroutines 2\n")), "sbx", DefaultBounds())
		if err == nil && len(series(mfs)) > 1 {
			t.Fatalf("a duplicate series was kept twice")
		}
	})
	t.Run("garbage is an error, not a panic", func(t *testing.T) {
		for _, in := range []string{"{{{", "tl_agent_goroutines{", "tl_agent_goroutines x\n", "\x00\xff"} {
			if _, _, err := Sanitize(strings.NewReader(in), "sbx", DefaultBounds()); err == nil {
				t.Errorf("%q: no error", in)
			}
		}
	})
}

// TestAgentFamiliesWellFormed: every declared family has a name of the
// agent's prefix, a help and a type the emitter supports.
func TestAgentFamiliesWellFormed(t *testing.T) {
	for _, f := range metrics.Agent {
		if !strings.HasPrefix(f.Name, "tl_agent_") || f.Help == "" {
			t.Errorf("%s: name or help", f.Name)
		}
		if f.Type == metrics.Counter && !strings.HasSuffix(f.Name, "_total") {
			t.Errorf("%s: a counter's name ends in _total", f.Name)
		}
		for _, l := range f.Labels {
			if l == SandboxLabel {
				t.Errorf("%s: the sandbox label is the proxy's", f.Name)
			}
		}
	}
}

// FuzzSanitize: no answer an agent writes makes Sanitize panic, and what
// it keeps is always within the bounds and labelled with the sandbox.
func FuzzSanitize(f *testing.F) {
	for _, seed := range []string{
		"# TYPE tl_agent_goroutines gauge\ntl_agent_goroutines 1\n",
		"# TYPE tl_agent_streams_open gauge\ntl_agent_streams_open{kind=\"api\",sandbox=\"x\"} 1\n",
		"# TYPE tl_agent_api_request_duration_seconds histogram\ntl_agent_api_request_duration_seconds_bucket{route=\"r\",code=\"200\",le=\"+Inf\"} 1\n",
		"tl_agent_goroutines{", "\x00", "# HELP\n# TYPE x summary\nx{quantile=\"0.5\"} 1\n",
	} {
		f.Add(seed)
	}
	b := Bounds{MaxBytes: 4 << 10, MaxSeries: 20, MaxLabelValue: 16, MaxBuckets: 8}
	f.Fuzz(func(t *testing.T, in string) {
		mfs, rep, err := Sanitize(strings.NewReader(in), "sbx", b)
		if err != nil {
			return
		}
		n := 0
		for _, mf := range mfs {
			fam := metrics.Lookup(mf.GetName())
			if fam == nil || mf.GetType() != dtoType[fam.Type] {
				t.Fatalf("kept an undeclared family %s", mf.GetName())
			}
			for _, m := range mf.Metric {
				n++
				last := m.Label[len(m.Label)-1]
				if len(m.Label) != len(fam.Labels)+1 || last.GetName() != SandboxLabel || last.GetValue() != "sbx" {
					t.Fatalf("series of %s labelled %v", mf.GetName(), m.Label)
				}
			}
		}
		if n > b.MaxSeries || n != rep.Kept {
			t.Fatalf("kept %d series (report %+v), bound %d", n, rep, b.MaxSeries)
		}
	})
}
