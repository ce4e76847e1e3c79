// Package scrape is the proxy's side of the agents' metrics: it parses an
// agent's answer and keeps only what internal/metrics declares (Sanitize).
// It lives apart from internal/metrics so the agent binary links no
// Prometheus library.
package scrape

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/protobuf/proto"

	"github.com/tensorlake/tl-agent/internal/metrics"
)

// SandboxLabel is the label the proxy adds to every series of an agent.
const SandboxLabel = "sandbox"

// dtoType is each family type's in the parsed exposition.
var dtoType = map[metrics.Type]dto.MetricType{
	metrics.Counter:   dto.MetricType_COUNTER,
	metrics.Gauge:     dto.MetricType_GAUGE,
	metrics.Histogram: dto.MetricType_HISTOGRAM,
}

// Bounds limit what one agent's answer may add to a scrape.
type Bounds struct {
	MaxBytes      int64 // the answer, as read; longer is refused whole
	MaxSeries     int   // series kept; later ones are dropped
	MaxLabelValue int   // bytes of one label value; a longer one drops its series
	MaxBuckets    int   // buckets of one histogram series; more drops it
}

// DefaultBounds: an agent exports ~150 series in about 20 KiB.
func DefaultBounds() Bounds {
	return Bounds{MaxBytes: 1 << 20, MaxSeries: 2000, MaxLabelValue: 128, MaxBuckets: 64}
}

// ErrTooLarge is returned for an answer over Bounds.MaxBytes.
var ErrTooLarge = errors.New("agent metrics over the size bound")

// Report says what Sanitize left out.
type Report struct {
	Kept, Dropped int
}

// Sanitize reads an agent's text exposition (at most b.MaxBytes) and
// returns what of it the proxy may serve, each series labelled
// sandbox=<sandbox>: only families of metrics.Agent with their declared type,
// help and exactly their declared label names; no timestamps; no
// duplicate series; at most b.MaxSeries series. An agent therefore cannot
// name another sandbox (its series never carry a sandbox label of their
// own), invent families, or grow the scrape past the bounds.
func Sanitize(r io.Reader, sandbox string, b Bounds) ([]*dto.MetricFamily, Report, error) {
	var rep Report
	data, err := io.ReadAll(io.LimitReader(r, b.MaxBytes+1))
	if err != nil {
		return nil, rep, err
	}
	if int64(len(data)) > b.MaxBytes {
		return nil, rep, fmt.Errorf("%w (%d bytes)", ErrTooLarge, b.MaxBytes)
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	in, err := parser.TextToMetricFamilies(bytes.NewReader(data))
	if err != nil {
		return nil, rep, fmt.Errorf("agent metrics: %w", err)
	}
	names := make([]string, 0, len(in))
	for n := range in {
		names = append(names, n)
	}
	sort.Strings(names)
	var out []*dto.MetricFamily
	seen := map[string]bool{}
	for _, n := range names {
		mf := in[n]
		f := metrics.Lookup(n)
		if f == nil || mf.GetType() != dtoType[f.Type] {
			rep.Dropped += len(mf.Metric)
			continue
		}
		clean := &dto.MetricFamily{Name: proto.String(f.Name), Help: proto.String(f.Help), Type: dtoType[f.Type].Enum()}
		for _, m := range mf.Metric {
			sig, ok := checkSeries(f, m, b)
			if !ok || seen[n+sig] || rep.Kept >= b.MaxSeries {
				rep.Dropped++
				continue
			}
			seen[n+sig] = true
			rep.Kept++
			m.TimestampMs = nil
			m.Label = append(m.Label, &dto.LabelPair{Name: proto.String(SandboxLabel), Value: proto.String(sandbox)})
			clean.Metric = append(clean.Metric, m)
		}
		if len(clean.Metric) > 0 {
			out = append(out, clean)
		}
	}
	return out, rep, nil
}

// checkSeries reports whether m has exactly f's labels (in any order;
// they are sorted to f's), values within bounds and the value kind of
// f's type, and returns its label signature.
func checkSeries(f *metrics.Family, m *dto.Metric, b Bounds) (string, bool) {
	if len(m.Label) != len(f.Labels) {
		return "", false
	}
	byName := make(map[string]string, len(m.Label))
	for _, l := range m.Label {
		if len(l.GetValue()) > b.MaxLabelValue {
			return "", false
		}
		byName[l.GetName()] = l.GetValue()
	}
	var sig strings.Builder
	labels := make([]*dto.LabelPair, 0, len(f.Labels))
	for _, name := range f.Labels {
		v, ok := byName[name]
		if !ok {
			return "", false
		}
		labels = append(labels, &dto.LabelPair{Name: proto.String(name), Value: proto.String(v)})
		sig.WriteString("\xff" + v)
	}
	m.Label = labels
	switch f.Type {
	case metrics.Counter:
		return sig.String(), m.Counter != nil && m.Gauge == nil && m.Histogram == nil
	case metrics.Gauge:
		return sig.String(), m.Gauge != nil && m.Counter == nil && m.Histogram == nil
	case metrics.Histogram:
		h := m.Histogram
		return sig.String(), h != nil && len(h.Bucket) <= b.MaxBuckets && len(h.PositiveSpan) == 0 && len(h.NegativeSpan) == 0
	}
	return "", false
}
