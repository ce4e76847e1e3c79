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
func WriteError(w http.ResponseWriter, status int, code, msg string) {
	WriteJSON(w, status, map[string]string{"error": msg, "code": code})
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
