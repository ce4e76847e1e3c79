package reqid

import "net/http"

// Middleware gives every request its ids (FromHeaders) before next runs:
// in the request's context (Logger), in the request's own headers, which
// a proxy passes on, so the next hop sees this hop's span as its parent,
// and in the response's headers, set before next writes anything. A hop
// that passes a response on from further in (the proxy) answers with its
// own ids and drops the next hop's (StripResponse).
func Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := FromHeaders(r.Header)
		if !id.Continued {
			// W3C Trace Context: tracestate belongs to the caller's
			// trace, and is not used when its traceparent is invalid; a
			// trace started here has none.
			r.Header.Del(HeaderTracestate)
		}
		id.SetHeaders(r.Header)
		id.SetHeaders(w.Header())
		next.ServeHTTP(w, r.WithContext(NewContext(r.Context(), id)))
	})
}

// StripResponse removes the ids from a response passed on from the next
// hop, whose own are set already (Middleware): the client gets one
// X-Request-Id and one traceparent, the ones of the hop it talked to.
func StripResponse(h http.Header) {
	h.Del(HeaderRequestID)
	h.Del(HeaderTraceparent)
}
