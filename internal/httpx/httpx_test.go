package httpx

import (
	"fmt"
	"io/fs"
	"net/http/httptest"
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
