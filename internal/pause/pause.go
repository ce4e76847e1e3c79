// Package pause tells running time from time the sandbox spent not running.
//
// A cgroup freeze (what `podman pause` does), a stopped agent (SIGSTOP) or a
// VM paused by its host advances CLOCK_MONOTONIC like any other time, so
// timers that count it (PTY idle kills, health checks, back-offs, keepalives)
// all expire at once on thaw. Clock differences cannot see such a pause
// (BOOTTIME and MONOTONIC differ only across a system suspend, which stops
// MONOTONIC and so no timer anyway). A ticker can: when the interval it
// observes exceeds its period by more than scheduling noise, the process
// was not running for the difference.
//
// One Detector per agent is shared by everything that counts time: its
// Clock never advances across a detected pause, its Timer fires only after
// that much running time, and subscribers learn of each pause (the uplink
// redials at once instead of waiting out keepalive timeouts).
package pause

import (
	"context"
	"sync"
	"time"
)

// Defaults: a tick every 500 ms; a gap over 1.5 s beyond it (2 s in all) is
// a pause. A loaded 2-core machine delays a tick by tens of milliseconds,
// a long GC stop-the-world by far less than a second.
const (
	DefaultPeriod = 500 * time.Millisecond
	DefaultSlack  = 1500 * time.Millisecond
)

// Gap is one detected pause.
type Gap struct {
	// At is when the pause was noticed (just after it ended).
	At time.Time
	// Length is how long the process did not run, at least.
	Length time.Duration
}

// Detector watches for pauses. The zero value is not usable: call New.
type Detector struct {
	period, slack time.Duration
	now           func() time.Time // the wall+monotonic clock; a seam for tests
	start         time.Time

	mu      sync.Mutex
	ticking bool          // Run is running: without it gaps mean nothing
	last    time.Time     // when the process last observed itself running
	paused  time.Duration // total detected
	gaps    int
	lastGap time.Time // when the last pause was reported
	subs    map[chan Gap]struct{}
}

// New returns a Detector with the given tick period and slack (zero: the
// defaults). Call Run to start ticking.
func New(period, slack time.Duration) *Detector {
	if period <= 0 {
		period = DefaultPeriod
	}
	if slack <= 0 {
		slack = DefaultSlack
	}
	return newDetector(period, slack, time.Now)
}

func newDetector(period, slack time.Duration, now func() time.Time) *Detector {
	t := now()
	return &Detector{period: period, slack: slack, now: now, start: t, last: t, subs: map[chan Gap]struct{}{}}
}

// Run ticks until ctx ends.
func (d *Detector) Run(ctx context.Context) {
	t := time.NewTicker(d.period)
	defer t.Stop()
	d.mu.Lock()
	d.ticking, d.last = true, d.now()
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.ticking = false
		d.mu.Unlock()
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.observe()
		}
	}
}

// observe notes that the process runs now; if the last sign of life is
// further back than a period plus slack, the excess over one period was a
// pause. Every reader calls it first, so a timer that fires on thaw before
// the ticker's goroutine has run still sees the pause.
func (d *Detector) observe() (running time.Duration) {
	now := d.now()
	d.mu.Lock()
	elapsed := now.Sub(d.last)
	var gap *Gap
	if d.ticking && elapsed > d.period+d.slack {
		g := Gap{At: now, Length: elapsed - d.period}
		d.paused += g.Length
		d.gaps++
		gap = &g
	}
	d.last = now
	running = now.Sub(d.start) - d.paused
	if gap != nil {
		d.lastGap = now
		d.notify(*gap)
	}
	d.mu.Unlock()
	return running
}

// Inject reports a pause the ticker could not see: a VM restored from a
// snapshot resumes with CLOCK_MONOTONIC where it stopped, so no interval
// looks long, yet every connection may be dead and every subscriber should
// act as after a detected pause (the lifecycle's resume calls it). length
// is what the caller knows of the pause (the host's figure), for logs and
// the count; it is not taken off the running clock, which did not advance.
// A pause the ticker detected within the last period plus slack is the
// same pause: it is not reported twice (a freeze then a resume call).
func (d *Detector) Inject(length time.Duration) bool {
	d.observe()
	now := d.now()
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.lastGap.IsZero() && now.Sub(d.lastGap) < d.period+d.slack {
		return false
	}
	d.gaps++
	d.lastGap = now
	d.notify(Gap{At: now, Length: length})
	return true
}

// notify must be called with d.mu held.
func (d *Detector) notify(g Gap) {
	for ch := range d.subs {
		select {
		case ch <- g:
		default: // a subscriber that has not read the last gap needs no second one
		}
	}
}

// Now is the running clock: time since New, less every detected pause.
// Differences of two readings are running time.
func (d *Detector) Now() time.Duration { return d.observe() }

// Paused is the total paused time detected so far, and the number of pauses.
func (d *Detector) Paused() (time.Duration, int) {
	d.observe()
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.paused, d.gaps
}

// Subscribe returns a channel that receives each detected pause (buffered
// one deep: a slow reader misses none but may see several as one wake-up)
// and a function that ends the subscription.
func (d *Detector) Subscribe() (<-chan Gap, func()) {
	ch := make(chan Gap, 1)
	d.mu.Lock()
	d.subs[ch] = struct{}{}
	d.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			d.mu.Lock()
			delete(d.subs, ch)
			d.mu.Unlock()
		})
	}
}

// Timer calls f once after dur of running time, in its own goroutine. When
// the underlying timer fires early in running time (a pause passed), it
// re-arms for the rest.
type Timer struct {
	d  *Detector
	f  func()
	mu sync.Mutex
	t  *time.Timer
	// deadline is the running-clock reading at which f is due; gen tells a
	// stale firing from the current arming.
	deadline time.Duration
	gen      uint64
	stopped  bool
}

// AfterFunc is time.AfterFunc in running time.
func (d *Detector) AfterFunc(dur time.Duration, f func()) *Timer {
	t := &Timer{d: d, f: f}
	t.Reset(dur)
	return t
}

// Reset re-arms the timer for dur of running time from now. It reports
// whether the timer was active.
func (t *Timer) Reset(dur time.Duration) bool {
	now := t.d.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	active := t.t != nil && !t.stopped
	if t.t != nil {
		t.t.Stop()
	}
	t.stopped = false
	t.gen++
	t.deadline = now + dur
	t.arm(dur, t.gen)
	return active
}

// Stop prevents f from running; it reports whether the timer was active.
func (t *Timer) Stop() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	active := t.t != nil && !t.stopped
	t.stopped = true
	t.gen++
	if t.t != nil {
		t.t.Stop()
	}
	return active
}

// arm must be called with t.mu held.
func (t *Timer) arm(dur time.Duration, gen uint64) {
	t.t = time.AfterFunc(dur, func() { t.fire(gen) })
}

func (t *Timer) fire(gen uint64) {
	now := t.d.Now()
	t.mu.Lock()
	if gen != t.gen || t.stopped {
		t.mu.Unlock()
		return
	}
	if rest := t.deadline - now; rest > 0 {
		t.arm(rest, gen) // a pause passed: wait out the running time still due
		t.mu.Unlock()
		return
	}
	t.stopped = true
	t.mu.Unlock()
	t.f()
}
