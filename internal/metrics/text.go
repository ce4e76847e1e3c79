package metrics

import (
	"bufio"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// Emitter collects one scrape's counters and gauges, by family; Write
// prints them. Families are internal/metrics' Agent: a name that is not
// one of them, or label values that do not match its labels, is a bug and
// panics (as prometheus.MustNewConstMetric did).
type Emitter struct {
	series map[string][]sample
}

type sample struct {
	labels []string
	value  float64
}

// NewEmitter returns an empty scrape.
func NewEmitter() *Emitter { return &Emitter{series: map[string][]sample{}} }

// Counter adds the counter name (an Agent family) with its label values.
func (e *Emitter) Counter(name string, v float64, labels ...string) { e.add(name, Counter, v, labels) }

// Gauge adds the gauge name (an Agent family) with its label values.
func (e *Emitter) Gauge(name string, v float64, labels ...string) { e.add(name, Gauge, v, labels) }

func (e *Emitter) add(name string, t Type, v float64, labels []string) {
	f := Lookup(name)
	if f == nil || f.Type != t || len(labels) != len(f.Labels) {
		panic("metrics: " + name + " is not an Agent " + string(t) + " with these labels")
	}
	e.series[name] = append(e.series[name], sample{labels: labels, value: v})
}

// HistogramVec is a histogram by label values (the API's: route, code),
// with APIBuckets' bounds.
type HistogramVec struct {
	family *Family
	mu     sync.Mutex
	series map[string]*histSeries // by the label values joined with \xff
}

type histSeries struct {
	labels []string
	counts []uint64 // per bucket, not cumulative; the last is +Inf
	sum    float64
	count  uint64
}

// NewAPIHistogram is the agent's API latency histogram.
func NewAPIHistogram() *HistogramVec {
	return &HistogramVec{family: Lookup(APIRequestDuration), series: map[string]*histSeries{}}
}

// Observe counts one value v (seconds) under the label values.
func (h *HistogramVec) Observe(v float64, labels ...string) {
	key := strings.Join(labels, "\xff")
	i := sort.SearchFloat64s(APIBuckets, v) // the first bound >= v
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.series[key]
	if s == nil {
		s = &histSeries{labels: labels, counts: make([]uint64, len(APIBuckets)+1)}
		h.series[key] = s
	}
	s.counts[i]++
	s.sum += v
	s.count++
}

// Counts sums the observations by the value of label (e.g. "code").
func (h *HistogramVec) Counts(label string) map[string]int64 {
	idx := -1
	for i, l := range h.family.Labels {
		if l == label {
			idx = i
		}
	}
	out := map[string]int64{}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, s := range h.series {
		if idx >= 0 {
			out[s.labels[idx]] += int64(s.count)
		}
	}
	return out
}

// Write prints the collected families and the histograms in Prometheus'
// text format (0.0.4), in Agent's order, each family's series sorted by
// their label values; families without a series are left out.
func (e *Emitter) Write(w io.Writer, hists ...*HistogramVec) error {
	bw := bufio.NewWriter(w)
	byName := map[string]*HistogramVec{}
	for _, h := range hists {
		byName[h.family.Name] = h
	}
	for i := range Agent {
		f := &Agent[i]
		if h := byName[f.Name]; h != nil {
			h.write(bw)
			continue
		}
		ss := e.series[f.Name]
		if len(ss) == 0 {
			continue
		}
		sort.SliceStable(ss, func(i, j int) bool { return less(ss[i].labels, ss[j].labels) })
		header(bw, f)
		for _, s := range ss {
			line(bw, f.Name, f.Labels, s.labels, "", "", s.value)
		}
	}
	return bw.Flush()
}

func (h *HistogramVec) write(bw *bufio.Writer) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.series) == 0 {
		return
	}
	ss := make([]*histSeries, 0, len(h.series))
	for _, s := range h.series {
		ss = append(ss, s)
	}
	sort.Slice(ss, func(i, j int) bool { return less(ss[i].labels, ss[j].labels) })
	f := h.family
	header(bw, f)
	for _, s := range ss {
		var cum uint64
		for i, n := range s.counts {
			cum += n
			le := "+Inf"
			if i < len(APIBuckets) {
				le = formatFloat(APIBuckets[i])
			}
			line(bw, f.Name+"_bucket", f.Labels, s.labels, "le", le, float64(cum))
		}
		line(bw, f.Name+"_sum", f.Labels, s.labels, "", "", s.sum)
		line(bw, f.Name+"_count", f.Labels, s.labels, "", "", float64(s.count))
	}
}

func header(bw *bufio.Writer, f *Family) {
	bw.WriteString("# HELP " + f.Name + " " + escape(f.Help, false) + "\n")
	bw.WriteString("# TYPE " + f.Name + " " + string(f.Type) + "\n")
}

// line writes one sample: name{labels[,extra]} value.
func line(bw *bufio.Writer, name string, names, values []string, extraName, extraValue string, v float64) {
	bw.WriteString(name)
	if len(names) > 0 || extraName != "" {
		bw.WriteByte('{')
		for i, n := range names {
			if i > 0 {
				bw.WriteByte(',')
			}
			bw.WriteString(n + `="` + escape(values[i], true) + `"`)
		}
		if extraName != "" {
			if len(names) > 0 {
				bw.WriteByte(',')
			}
			bw.WriteString(extraName + `="` + extraValue + `"`)
		}
		bw.WriteByte('}')
	}
	bw.WriteString(" " + formatFloat(v) + "\n")
}

// escape escapes a HELP text (backslash, newline) or a label value (also
// the double quote), as the text format requires.
func escape(s string, quote bool) string {
	if !strings.ContainsAny(s, "\\\n\"") {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '"' && quote:
			b.WriteString(`\"`)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

func formatFloat(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

func less(a, b []string) bool {
	for i := range a {
		if i >= len(b) {
			return false
		}
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return len(a) < len(b)
}
