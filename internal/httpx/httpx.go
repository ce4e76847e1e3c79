// Package httpx holds the small HTTP helpers every API capability shares:
// the spec's JSON error body, JSON answers, and bounded JSON request
// decoding. It is the only thing capabilities share about HTTP.
package httpx

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"syscall"
)

// MaxJSONBody bounds JSON request bodies; file uploads are streamed and not
// decoded through here.
const MaxJSONBody = 1 << 20

// WriteJSON writes v as JSON with status code.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// WriteError writes the spec's error body: {"error": msg, "code": code}.
// A CodeResourcesExhausted answer always carries Retry-After.
func WriteError(w http.ResponseWriter, status int, code, msg string) {
	if code == CodeResourcesExhausted {
		w.Header().Set("Retry-After", strconv.Itoa(RetryAfterSecs))
	}
	WriteJSON(w, status, map[string]string{"error": msg, "code": code})
}

// CodeResourcesExhausted is the one retryable answer, 503 with
// Retry-After, of every API that starts processes (run, start, PTY
// create): the kernel refused for now (fork's EAGAIN when the sandbox's
// pids limit is full, ENOMEM, no fds left) and the same request may
// succeed once the workload frees some.
const CodeResourcesExhausted = "RESOURCES_EXHAUSTED"

// RetryAfterSecs is the Retry-After of a CodeResourcesExhausted answer.
const RetryAfterSecs = 1

// IsExhausted reports whether err is the kernel running out of something
// for now: EAGAIN (fork past the pids limit or RLIMIT_NPROC), ENOMEM
// (clone), EMFILE or ENFILE (pipes and PTYs).
func IsExhausted(err error) bool {
	for _, e := range []error{syscall.EAGAIN, syscall.ENOMEM, syscall.EMFILE, syscall.ENFILE} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// DecodeJSON decodes a bounded JSON body (MaxJSONBody) into v. Unknown
// fields are ignored, as the SDKs may send more than this version knows.
// On failure it writes a 400 INVALID_REQUEST, "invalid JSON body: ..."
// in the API's terms (JSONErrorText), and returns false.
func DecodeJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	body := http.MaxBytesReader(w, r.Body, MaxJSONBody)
	dec := json.NewDecoder(body)
	err := dec.Decode(v)
	if err == nil {
		// One JSON value, then only white space: a second value or junk
		// after it would be silently dropped otherwise.
		if _, next := dec.Token(); !errors.Is(next, io.EOF) {
			err = errTrailing
			var mbe *http.MaxBytesError
			if errors.As(next, &mbe) {
				err = next
			}
		}
	}
	if err == nil {
		return true
	}
	var mbe *http.MaxBytesError
	msg := JSONErrorText(err)
	switch {
	case errors.As(err, &mbe):
		msg = fmt.Sprintf("over %d bytes, the limit of a JSON request", MaxJSONBody)
	case errors.Is(err, io.EOF):
		msg = "the body is empty: a JSON object is expected"
	}
	WriteError(w, http.StatusBadRequest, "INVALID_REQUEST", "invalid JSON body: "+msg)
	return false
}

var errTrailing = errors.New("more data after the JSON value: send one JSON object")

// JSONErrorText says what is wrong with a JSON document in the API's
// terms: the JSON field (a dotted path from the top) and the JSON type
// expected, never a Go type or struct name. Errors of a field's own
// UnmarshalJSON (the user forms) are its words, as they are.
func JSONErrorText(err error) string {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te):
		where := "the body"
		if te.Field != "" {
			where = strconv.Quote(te.Field)
		}
		return fmt.Sprintf("%s: expected %s, got %s", where, jsonType(te.Type), gotValue(te.Value))
	case errors.As(err, &se):
		return fmt.Sprintf("%s (at byte %d)", strings.TrimPrefix(se.Error(), "json: "), se.Offset)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "the JSON ends early (unexpected end of input)"
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

// jsonType names the JSON type that decodes into t.
func jsonType(t reflect.Type) string {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil {
		return "a value"
	}
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if t.Bits() < 64 {
			return fmt.Sprintf("an integer from %d to %d", int64(-1)<<(t.Bits()-1), int64(1)<<(t.Bits()-1)-1)
		}
		return "an integer"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		if t.Bits() < 64 {
			return fmt.Sprintf("an integer from 0 to %d", uint64(1)<<t.Bits()-1)
		}
		return "a non-negative integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Slice, reflect.Array:
		if t.Elem().Kind() == reflect.Uint8 {
			return "a string (base64)"
		}
		return "an array"
	case reflect.Map, reflect.Struct:
		return "an object"
	}
	return "another type"
}

// gotValue is the JSON value encoding/json reports ("string", "number
// 1.5") with an article.
func gotValue(v string) string {
	switch v {
	case "bool":
		return "a boolean"
	case "array", "object":
		return "an " + v
	case "string", "number":
		return "a " + v
	}
	return v // "number 1.5": the value itself
}

// Routes serves mux, and answers a request no route takes with the spec's
// error body: 405 METHOD_NOT_ALLOWED with the Allow header the mux
// computed when the path has routes for other methods (routes are
// registered as "GET /path"), else 404 NOT_FOUND.
func Routes(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, pattern := mux.Handler(r)
		if pattern != "" {
			mux.ServeHTTP(w, r) // sets the path values h needs
			return
		}
		// The mux's own 404 or 405 answer is plain text: keep its status
		// and Allow, answer in JSON.
		rec := &statusRecorder{h: http.Header{}}
		h.ServeHTTP(rec, r)
		if rec.code == http.StatusMethodNotAllowed {
			allow := rec.h.Get("Allow")
			w.Header().Set("Allow", allow)
			WriteError(w, http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED", r.Method+" is not allowed on "+r.URL.Path+"; allowed: "+allow)
			return
		}
		WriteError(w, http.StatusNotFound, "NOT_FOUND", "no route for "+r.Method+" "+r.URL.Path)
	})
}

// statusRecorder keeps a handler's status and header, discarding its body.
type statusRecorder struct {
	h    http.Header
	code int
}

func (s *statusRecorder) Header() http.Header { return s.h }
func (s *statusRecorder) WriteHeader(code int) {
	if s.code == 0 {
		s.code = code
	}
}
func (s *statusRecorder) Write(p []byte) (int, error) {
	s.WriteHeader(http.StatusOK)
	return len(p), nil
}
