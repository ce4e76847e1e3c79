// Package reqid owns the ids that follow one request across the hops:
// the W3C Trace Context `traceparent` (https://www.w3.org/TR/trace-context/)
// and `X-Request-Id`. Both binaries accept a caller's ids when they are
// well formed, assign new ones otherwise, log them on every event of the
// request and return them in the response. They are for logs only: nothing
// is decided by them, and every accepted value is bounded.
package reqid

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"

	"github.com/rs/zerolog"
)

// Header names.
const (
	HeaderRequestID   = "X-Request-Id"
	HeaderTraceparent = "Traceparent"
	HeaderTracestate  = "Tracestate"
)

// MaxRequestID bounds an accepted X-Request-Id; a longer one is replaced.
const MaxRequestID = 128

// ID is one request's ids.
type ID struct {
	// Request is the caller's X-Request-Id when sane, else the trace id.
	Request string
	// Trace is the 32-hex W3C trace-id: the caller's, or a new one.
	Trace string
	// Span is this hop's 16-hex parent-id, new for every hop.
	Span string
	// Flags are the W3C trace-flags passed on (for a later version of
	// the header, only the sampled bit).
	Flags byte
	// Continued is true when Trace is the caller's (its traceparent was
	// valid), false for a trace started here.
	Continued bool
}

// Valid reports whether id can be logged and passed on as it is: the
// check the agent applies to an id from a stream header.
func (id ID) Valid() bool {
	return ValidRequestID(id.Request) && ValidTraceID(id.Trace) && isHex(id.Span, 16) && !allZero(id.Span)
}

// FromHeaders returns the ids of an incoming request: the caller's
// trace-id when its traceparent is valid, else a new trace; always a new
// span for this hop; the caller's X-Request-Id when it is sane, else the
// trace id (so one value finds the request in every log).
func FromHeaders(h http.Header) ID {
	id := ID{Span: randHex(8)}
	var err error
	tps := h.Values(HeaderTraceparent)
	if len(tps) == 1 {
		// Several traceparent headers are invalid (W3C: "multiple
		// traceparent headers"), and start a new trace too.
		id.Trace, _, id.Flags, err = ParseTraceparent(tps[0])
	}
	id.Continued = len(tps) == 1 && err == nil
	if !id.Continued {
		id.Trace, id.Flags = randHex(16), 0
	}
	id.Request = id.Trace
	if rids := h.Values(HeaderRequestID); len(rids) == 1 && ValidRequestID(rids[0]) {
		id.Request = rids[0]
	}
	return id
}

// New returns ids for something that starts here (an SSH connection).
func New() ID {
	t := randHex(16)
	return ID{Request: t, Trace: t, Span: randHex(8)}
}

// Traceparent is the version 00 header value naming this hop's span.
func (id ID) Traceparent() string {
	const hexdig = "0123456789abcdef"
	return "00-" + id.Trace + "-" + id.Span + "-" + string([]byte{hexdig[id.Flags>>4], hexdig[id.Flags&0xf]})
}

// SetHeaders writes both ids into h (a request passed on, or a response).
func (id ID) SetHeaders(h http.Header) {
	h.Set(HeaderRequestID, id.Request)
	h.Set(HeaderTraceparent, id.Traceparent())
}

// Errors of ParseTraceparent.
var (
	ErrTraceparentFormat = errors.New("traceparent: not version-traceid-parentid-flags in lower-case hex")
	ErrTraceparentZero   = errors.New("traceparent: all-zero trace-id or parent-id")
	ErrTraceparentFF     = errors.New("traceparent: version ff is invalid")
)

// ParseTraceparent parses a traceparent value per W3C Trace Context
// level 1, "traceparent Header": version 00 is exactly
// `00-<32 hex trace-id>-<16 hex parent-id>-<2 hex flags>` in lower case,
// with neither id all zeros. A later version (not ff) is read the same
// way up to its flags, which must end the value or be followed by '-'
// ("Versioning of traceparent"); of its flags only the sampled bit is
// kept.
func ParseTraceparent(v string) (trace, parent string, flags byte, err error) {
	if len(v) < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-' || !isHex(v[:2], 2) {
		return "", "", 0, ErrTraceparentFormat
	}
	version := v[:2]
	switch {
	case version == "ff":
		return "", "", 0, ErrTraceparentFF
	case version == "00" && len(v) != 55:
		return "", "", 0, ErrTraceparentFormat
	case version != "00" && len(v) > 55 && v[55] != '-':
		return "", "", 0, ErrTraceparentFormat
	}
	trace, parent, fl := v[3:35], v[36:52], v[53:55]
	if !isHex(trace, 32) || !isHex(parent, 16) || !isHex(fl, 2) {
		return "", "", 0, ErrTraceparentFormat
	}
	if allZero(trace) || allZero(parent) {
		return "", "", 0, ErrTraceparentZero
	}
	b, _ := hex.DecodeString(fl)
	flags = b[0]
	if version != "00" {
		flags &= 0x01
	}
	return trace, parent, flags, nil
}

// ValidRequestID is the rule for a caller's X-Request-Id: 1 to
// MaxRequestID bytes of printable ASCII without spaces (0x21 to 0x7e), so
// it is one token in any log and can never split a header or a line.
func ValidRequestID(v string) bool {
	if v == "" || len(v) > MaxRequestID {
		return false
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x21 || v[i] > 0x7e {
			return false
		}
	}
	return true
}

// ValidTraceID is the W3C rule for a trace-id: 32 lower-case hex digits,
// not all zeros.
func ValidTraceID(v string) bool { return isHex(v, 32) && !allZero(v) }

// isHex reports whether s is n lower-case hex digits.
func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func allZero(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] != '0' {
			return false
		}
	}
	return true
}

// randHex returns n random bytes in hex, never all zeros.
func randHex(n int) string {
	b := make([]byte, n)
	for {
		_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
		if s := hex.EncodeToString(b); !allZero(s) {
			return s
		}
	}
}

type ctxKey struct{}

// NewContext returns ctx carrying id.
func NewContext(ctx context.Context, id ID) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// FromContext returns the ids ctx carries.
func FromContext(ctx context.Context) (ID, bool) {
	id, ok := ctx.Value(ctxKey{}).(ID)
	return id, ok
}

// Logger is base with the request's ids of ctx (request_id, trace_id), or
// base itself when ctx carries none. Handlers call it with their own
// component's logger, so an event keeps both.
func Logger(ctx context.Context, base zerolog.Logger) zerolog.Logger {
	id, ok := FromContext(ctx)
	if !ok {
		return base
	}
	return id.With(base)
}

// With is base with id's fields.
func (id ID) With(base zerolog.Logger) zerolog.Logger {
	return base.With().Str("request_id", id.Request).Str("trace_id", id.Trace).Logger()
}
