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
	"strconv"
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

// DecodeJSON decodes a bounded JSON body into v. Unknown fields are
// ignored, as the SDKs may send more than this version knows. On failure
// it writes a 400 INVALID_REQUEST and returns false.
func DecodeJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	body := http.MaxBytesReader(w, r.Body, MaxJSONBody)
	dec := json.NewDecoder(body)
	if err := dec.Decode(v); err != nil {
		msg := err.Error()
		var mbe *http.MaxBytesError
		switch {
		case errors.As(err, &mbe):
			msg = fmt.Sprintf("request body over %d bytes", MaxJSONBody)
		case errors.Is(err, io.EOF):
			msg = "empty request body: JSON expected"
		}
		WriteError(w, http.StatusBadRequest, "INVALID_REQUEST", msg)
		return false
	}
	return true
}
