package agent

import (
	"net/http"

	"github.com/tensorlake/tl-agent/internal/httpx"
)

// LogLevel is the control socket's answer about the log level.
type LogLevel struct {
	Level    string `json:"level"`
	Previous string `json:"previous,omitempty"` // after a change
}

// logLevelRoutes serves the agent's log level on the control socket:
// GET /log-level reads it, PUT /log-level {"level": "debug"} sets it at
// once for every logger of the agent (Config.Level), without a restart.
func (a *Agent) logLevelRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /log-level", func(w http.ResponseWriter, r *http.Request) {
		if a.cfg.Level == nil {
			httpx.WriteError(w, http.StatusNotImplemented, "LEVEL_FIXED", "this agent's log level cannot change while it runs")
			return
		}
		httpx.WriteJSON(w, http.StatusOK, LogLevel{Level: a.cfg.Level.String()})
	})
	mux.HandleFunc("PUT /log-level", func(w http.ResponseWriter, r *http.Request) {
		if a.cfg.Level == nil {
			httpx.WriteError(w, http.StatusNotImplemented, "LEVEL_FIXED", "this agent's log level cannot change while it runs")
			return
		}
		var req LogLevel
		if !httpx.DecodeJSON(w, r, &req) {
			return
		}
		prev := a.cfg.Level.String()
		if err := a.cfg.Level.Set(req.Level); err != nil {
			httpx.WriteError(w, http.StatusBadRequest, "INVALID_LEVEL", err.Error())
			return
		}
		// Without a level, so it is written whatever the new level is.
		a.log.Log().Str("from", prev).Str("to", req.Level).Msg("log level changed")
		httpx.WriteJSON(w, http.StatusOK, LogLevel{Level: req.Level, Previous: prev})
	})
}
