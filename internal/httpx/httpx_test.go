package httpx

import (
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
)

// The retryable answer always says when to retry; others do not.
func TestExhaustedCarriesRetryAfter(t *testing.T) {
	w := httptest.NewRecorder()
	WriteError(w, 503, CodeResourcesExhausted, "out of pids")
	if w.Code != 503 || w.Header().Get("Retry-After") != "1" {
		t.Fatalf("RESOURCES_EXHAUSTED: status %d, Retry-After %q", w.Code, w.Header().Get("Retry-After"))
	}
	w = httptest.NewRecorder()
	WriteError(w, 503, "SHUTTING_DOWN", "bye")
	if w.Header().Get("Retry-After") != "" {
		t.Fatalf("SHUTTING_DOWN got Retry-After: it is not retryable on this sandbox")
	}
}

func TestIsExhausted(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{&fs.PathError{Op: "fork/exec", Path: "/bin/true", Err: syscall.EAGAIN}, true},
		{fmt.Errorf("start: %w", syscall.ENOMEM), true},
		{&fs.PathError{Op: "pipe", Err: syscall.EMFILE}, true},
		{syscall.ENFILE, true},
		{&fs.PathError{Op: "fork/exec", Err: syscall.ENOENT}, false},
		{syscall.EACCES, false},
		{nil, false},
	} {
		if got := IsExhausted(c.err); got != c.want {
			t.Errorf("IsExhausted(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

// Every malformed body gets 400 INVALID_REQUEST "invalid JSON body: ..."
// naming the JSON field and type, never a Go type, struct or bare EOF.
func TestDecodeJSONErrors(t *testing.T) {
	type inner struct {
		Rows uint16 `json:"rows"`
	}
	type req struct {
		Command string            `json:"command"`
		Timeout float64           `json:"timeout"`
		Signal  int               `json:"signal"`
		Args    []string          `json:"args"`
		Env     map[string]string `json:"env"`
		Size    inner             `json:"size"`
		Keep    *bool             `json:"keep"`
	}
	for _, c := range []struct{ body, want string }{
		{`{"command":`, "invalid JSON body: the JSON ends early"},
		{``, "invalid JSON body: the body is empty"},
		{`{"timeout":"5"}`, `invalid JSON body: "timeout": expected a number, got a string`},
		{`{"signal":1.5}`, `invalid JSON body: "signal": expected an integer, got number 1.5`},
		{`{"args":"ls"}`, `invalid JSON body: "args": expected an array, got a string`},
		{`{"args":[1]}`, `invalid JSON body: "args": expected a string, got a number`},
		{`{"env":[]}`, `invalid JSON body: "env": expected an object, got an array`},
		{`{"size":{"rows":70000}}`, `invalid JSON body: "size.rows": expected an integer from 0 to 65535, got number 70000`},
		{`{"keep":"yes"}`, `invalid JSON body: "keep": expected true or false, got a string`},
		{`{"command":true}`, `invalid JSON body: "command": expected a string, got a boolean`},
		{`["ls"]`, `invalid JSON body: the body: expected an object, got an array`},
		{`{command}`, `invalid JSON body: invalid character 'c' looking for beginning of object key string (at byte 2)`},
		{`{"command":"ls"} {"command":"rm"}`, "invalid JSON body: more data after the JSON value"},
		{`{"command":"ls"}x`, "invalid JSON body: more data after the JSON value"},
		{`{"command":"` + strings.Repeat("a", MaxJSONBody) + `"}`, "invalid JSON body: over 1048576 bytes"},
	} {
		w := httptest.NewRecorder()
		r := httptest.NewRequest("POST", "/x", strings.NewReader(c.body))
		var v req
		if DecodeJSON(w, r, &v) {
			t.Errorf("%.40q: accepted", c.body)
			continue
		}
		var e struct{ Error, Code string }
		_ = json.Unmarshal(w.Body.Bytes(), &e)
		if w.Code != 400 || e.Code != "INVALID_REQUEST" || !strings.HasPrefix(e.Error, c.want) {
			t.Errorf("%.40q: %d %s %q; want 400 INVALID_REQUEST %q", c.body, w.Code, e.Code, e.Error, c.want)
		}
		for _, leak := range []string{"Go ", "struct", "req.", "uint16", "float64", "unmarshal", "unexpected EOF"} {
			if strings.Contains(e.Error, leak) {
				t.Errorf("%.40q: %q names %q", c.body, e.Error, leak)
			}
		}
	}
	// Good bodies still pass, white space after them included.
	var v struct{ Command string }
	if !DecodeJSON(httptest.NewRecorder(), httptest.NewRequest("POST", "/x", strings.NewReader("{\"command\":\"ls\"}\n \n")), &v) || v.Command != "ls" {
		t.Errorf("good body refused: %+v", v)
	}
}

// A wrong method on a known path is 405 with Allow; an unknown path 404;
// both in the spec's JSON error shape. A route still gets its path values.
func TestRoutes(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/pty/{id}", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "get "+r.PathValue("id")) })
	mux.HandleFunc("DELETE /api/v1/pty/{id}", func(w http.ResponseWriter, r *http.Request) {})
	h := Routes(mux)
	for _, c := range []struct {
		method, path string
		status       int
		code, allow  string
	}{
		{"POST", "/api/v1/pty/abc", 405, "METHOD_NOT_ALLOWED", "DELETE, GET, HEAD"},
		{"GET", "/api/v1/nope", 404, "NOT_FOUND", ""},
		{"GET", "/api/v1/pty/abc", 200, "", ""},
	} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(c.method, c.path, nil))
		var e struct{ Error, Code string }
		_ = json.Unmarshal(w.Body.Bytes(), &e)
		if w.Code != c.status || e.Code != c.code || w.Header().Get("Allow") != c.allow {
			t.Errorf("%s %s: %d %q Allow %q; want %d %q Allow %q", c.method, c.path, w.Code, w.Body.String(), w.Header().Get("Allow"), c.status, c.code, c.allow)
		}
		if c.status != 200 && w.Header().Get("Content-Type") != "application/json" {
			t.Errorf("%s %s: Content-Type %q", c.method, c.path, w.Header().Get("Content-Type"))
		}
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "/api/v1/pty/abc", nil))
	if w.Body.String() != "get abc" {
		t.Errorf("route: %q", w.Body.String())
	}
}
