package process

import (
	"sync/atomic"

	"github.com/tensorlake/tl-agent/supervisor"
)

// Outcomes of an ended process, as Stats.Exited counts them.
const (
	OutcomeSuccess   = "success"    // exit code 0
	OutcomeError     = "error"      // a non-zero exit code
	OutcomeSignal    = "signal"     // killed by a signal (not the OOM killer)
	OutcomeOOMKilled = "oom_killed" // killed by the OOM killer
)

// Stats are the process table's counts, for the operator's status and
// the agent's metrics (fields in key order).
type Stats struct {
	Exited         map[string]int64 `json:"exited"`          // ended processes by outcome (the Outcome constants)
	HealthFailures int64            `json:"health_failures"` // failed health checks of supervised processes
	Restarts       int64            `json:"restarts"`        // restarts of supervised processes
	Running        int              `json:"running"`         // running now
	Started        int64            `json:"started"`         // started since the agent did
	Total          int              `json:"total"`           // in the table: running and kept exited
}

// counts are the table's counters; each is one atomic, so reading needs
// no lock.
type counts struct {
	started, restarts, healthFails   atomic.Int64
	success, failure, signaled, oomd atomic.Int64
}

// exited counts e by its outcome.
func (c *counts) exited(e supervisor.Exit, oom bool) {
	switch {
	case oom:
		c.oomd.Add(1)
	case e.Signal != 0:
		c.signaled.Add(1)
	case e.Code == 0:
		c.success.Add(1)
	default:
		c.failure.Add(1)
	}
}

// Stats reports the table's counts.
func (t *Table) Stats() Stats {
	running, total := t.Counts()
	c := &t.counts
	return Stats{
		Exited: map[string]int64{OutcomeSuccess: c.success.Load(), OutcomeError: c.failure.Load(),
			OutcomeSignal: c.signaled.Load(), OutcomeOOMKilled: c.oomd.Load()},
		HealthFailures: c.healthFails.Load(), Restarts: c.restarts.Load(),
		Running: running, Started: c.started.Load(), Total: total,
	}
}
