// Package activity records when the sandbox was last used by someone, so
// a platform can pause idle sandboxes (GET /api/v1/info's
// last_activity_at). A use is either an instant (a file request, an exec
// start, a stdin write) or a span (an attached PTY, an SSH session, a
// tunnel): while a span is held the sandbox is active now. The main
// command's own work and boot services are not activity: only doors that a
// user goes through record.
package activity

import (
	"sync/atomic"
	"time"
)

// Recorder is the one activity clock of an agent; the zero value is ready
// and a nil Recorder records nothing.
type Recorder struct {
	last atomic.Int64 // unix nanoseconds of the last recorded use, 0: none
	held atomic.Int64 // spans in progress
}

// Touch records a use now.
func (r *Recorder) Touch() {
	if r != nil {
		r.last.Store(time.Now().UnixNano())
	}
}

// Hold records a span starting now; the returned function ends it (and
// records its end as a use). It is safe to call more than once.
func (r *Recorder) Hold() func() {
	if r == nil {
		return func() {}
	}
	r.Touch()
	r.held.Add(1)
	var once atomic.Bool
	return func() {
		if once.CompareAndSwap(false, true) {
			r.Touch()
			r.held.Add(-1)
		}
	}
}

// Last is when the sandbox was last used: now while a span is held, the
// zero time when nothing was ever recorded.
func (r *Recorder) Last() time.Time {
	if r == nil {
		return time.Time{}
	}
	if r.held.Load() > 0 {
		return time.Now()
	}
	if n := r.last.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// Active is how many spans are held now.
func (r *Recorder) Active() int64 {
	if r == nil {
		return 0
	}
	return r.held.Load()
}
