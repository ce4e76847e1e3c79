package reqid

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

const (
	goodTrace  = "4bf92f3577b34da6a3ce929d0e0e4736"
	goodParent = "00f067aa0ba902b7"
	goodTP     = "00-" + goodTrace + "-" + goodParent + "-01"
)

func TestParseTraceparent(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		ok       bool
		flags    byte
	}{
		{"the spec's example", goodTP, true, 1},
		{"not sampled", "00-" + goodTrace + "-" + goodParent + "-00", true, 0},
		{"unknown flags kept for version 00", "00-" + goodTrace + "-" + goodParent + "-ff", true, 0xff},
		{"empty", "", false, 0},
		{"upper-case hex", "00-" + strings.ToUpper(goodTrace) + "-" + goodParent + "-01", false, 0},
		{"all-zero trace-id", "00-" + strings.Repeat("0", 32) + "-" + goodParent + "-01", false, 0},
		{"all-zero parent-id", "00-" + goodTrace + "-" + strings.Repeat("0", 16) + "-01", false, 0},
		{"version ff", "ff-" + goodTrace + "-" + goodParent + "-01", false, 0},
		{"version 00 with a tail", goodTP + "-00", false, 0},
		{"short trace-id", "00-" + goodTrace[:31] + "-" + goodParent + "-01", false, 0},
		{"non-hex flags", "00-" + goodTrace + "-" + goodParent + "-0g", false, 0},
		{"wrong separators", "00_" + goodTrace + "_" + goodParent + "_01", false, 0},
		{"non-hex version", "0x-" + goodTrace + "-" + goodParent + "-01", false, 0},
		{"future version", "01-" + goodTrace + "-" + goodParent + "-03", true, 1},
		{"future version with a tail", "cc-" + goodTrace + "-" + goodParent + "-01-what-the-future-holds", true, 1},
		{"future version, tail without a dash", "cc-" + goodTrace + "-" + goodParent + "-01x", false, 0},
		{"spaces around", " " + goodTP, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			trace, parent, flags, err := ParseTraceparent(tc.in)
			if (err == nil) != tc.ok {
				t.Fatalf("ParseTraceparent(%q) error %v, want ok=%v", tc.in, err, tc.ok)
			}
			if tc.ok && (trace != goodTrace || parent != goodParent || flags != tc.flags) {
				t.Fatalf("ParseTraceparent(%q) = %s %s %02x, want %s %s %02x", tc.in, trace, parent, flags, goodTrace, goodParent, tc.flags)
			}
		})
	}
}

func TestValidRequestID(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"abc-123", true},
		{"f81d4fae-7dec-11d0-a765-00a0c91e6bf6", true},
		{strings.Repeat("x", MaxRequestID), true},
		{strings.Repeat("x", MaxRequestID+1), false},
		{"", false},
		{"has space", false},
		{"tab\there", false},
		{"new\nline", false},
		{"nul\x00", false},
		{"del\x7f", false},
		{"é", false},
	} {
		if got := ValidRequestID(tc.in); got != tc.ok {
			t.Errorf("ValidRequestID(%q) = %v, want %v", tc.in, got, tc.ok)
		}
	}
}

func TestFromHeaders(t *testing.T) {
	t.Run("a valid traceparent keeps its trace-id and gets a new parent-id", func(t *testing.T) {
		h := http.Header{}
		h.Set(HeaderTraceparent, goodTP)
		id := FromHeaders(h)
		if id.Trace != goodTrace || id.Span == goodParent || id.Flags != 1 || !id.Valid() || !id.Continued {
			t.Fatalf("got %+v", id)
		}
		if id.Request != goodTrace {
			t.Fatalf("no X-Request-Id: request id %q, want the trace id", id.Request)
		}
		if _, p, _, err := ParseTraceparent(id.Traceparent()); err != nil || p != id.Span {
			t.Fatalf("Traceparent() = %q (%v)", id.Traceparent(), err)
		}
	})
	t.Run("a malformed traceparent starts a new valid trace", func(t *testing.T) {
		h := http.Header{}
		h.Set(HeaderTraceparent, "00-"+strings.Repeat("0", 32)+"-"+goodParent+"-01")
		id := FromHeaders(h)
		if id.Trace == "" || allZero(id.Trace) || !id.Valid() || id.Continued {
			t.Fatalf("got %+v", id)
		}
		if _, _, _, err := ParseTraceparent(id.Traceparent()); err != nil {
			t.Fatalf("new traceparent %q invalid: %v", id.Traceparent(), err)
		}
	})
	t.Run("two traceparent headers start a new trace", func(t *testing.T) {
		h := http.Header{}
		h.Add(HeaderTraceparent, goodTP)
		h.Add(HeaderTraceparent, goodTP)
		if id := FromHeaders(h); id.Trace == goodTrace {
			t.Fatalf("kept the trace of a duplicated header: %+v", id)
		}
	})
	t.Run("a sane X-Request-Id is kept", func(t *testing.T) {
		h := http.Header{}
		h.Set(HeaderRequestID, "client-42")
		if id := FromHeaders(h); id.Request != "client-42" || !id.Valid() {
			t.Fatalf("got %+v", id)
		}
	})
	t.Run("an insane X-Request-Id is replaced", func(t *testing.T) {
		h := http.Header{}
		h.Set(HeaderRequestID, strings.Repeat("y", MaxRequestID+1))
		if id := FromHeaders(h); id.Request != id.Trace || !id.Valid() {
			t.Fatalf("got %+v", id)
		}
	})
	t.Run("no ids: new ones", func(t *testing.T) {
		a, b := FromHeaders(http.Header{}), FromHeaders(http.Header{})
		if !a.Valid() || a.Trace == b.Trace || a.Span == b.Span {
			t.Fatalf("got %+v and %+v", a, b)
		}
	})
}

// TestMiddlewareDropsTracestateOfANewTrace: a caller's tracestate goes
// on with its trace, and is dropped when its traceparent was invalid.
func TestMiddlewareDropsTracestateOfANewTrace(t *testing.T) {
	for _, tc := range []struct {
		tp   string
		keep bool
	}{{goodTP, true}, {"garbage", false}, {"", false}} {
		var state string
		h := Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			state = r.Header.Get(HeaderTracestate)
		}))
		req := httptest.NewRequest("GET", "/", nil)
		if tc.tp != "" {
			req.Header.Set(HeaderTraceparent, tc.tp)
		}
		req.Header.Set(HeaderTracestate, "vendor=x")
		h.ServeHTTP(httptest.NewRecorder(), req)
		if (state != "") != tc.keep {
			t.Errorf("traceparent %q: tracestate passed on %q, want kept=%v", tc.tp, state, tc.keep)
		}
	}
}

func TestMiddleware(t *testing.T) {
	var seen ID
	var passed string
	h := Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen, _ = FromContext(r.Context())
		passed = r.Header.Get(HeaderTraceparent)
		w.WriteHeader(http.StatusTeapot)
	}))
	req := httptest.NewRequest("GET", "/", nil)
	req.Header.Set(HeaderRequestID, "rid-1")
	req.Header.Set(HeaderTraceparent, goodTP)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if seen.Request != "rid-1" || seen.Trace != goodTrace {
		t.Fatalf("context ids %+v", seen)
	}
	if passed != seen.Traceparent() {
		t.Fatalf("the request passed on carries %q, want this hop's %q", passed, seen.Traceparent())
	}
	if got := rec.Header().Get(HeaderRequestID); got != "rid-1" {
		t.Fatalf("response X-Request-Id %q", got)
	}
	if got := rec.Header().Get(HeaderTraceparent); got != seen.Traceparent() {
		t.Fatalf("response traceparent %q, want %q", got, seen.Traceparent())
	}
}
