package agent

import (
	"net/http"

	"github.com/tensorlake/tl-agent/internal/reqid"
)

// withRequestIDs gives every API request its ids (reqid.Middleware: the
// proxy's X-Request-Id and traceparent when sane, new ones otherwise),
// which the capabilities' handlers log with each event of the request
// (reqid.Logger) and the response carries back; and logs the request
// itself at debug. The query is left out: it may hold a PTY token.
func (a *Agent) withRequestIDs(next http.Handler) http.Handler {
	return reqid.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log := reqid.Logger(r.Context(), a.log)
		log.Debug().Str("method", r.Method).Str("path", r.URL.Path).Msg("api request")
		next.ServeHTTP(w, r)
	}))
}
