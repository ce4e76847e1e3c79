// Package memtrim gives memory back to the OS after a burst of work.
//
// Go returns freed heap to the OS slowly (its background scavenger) and
// only after a GC has found it free; a process that was busy for a moment
// (a 1 GiB upload: per-stream receive buffers, copy buffers) and then goes
// idle can hold tens of MB of RSS for minutes. PID 1 should not. So a
// Trimmer watches the allocation counter: when a tick that allocated a lot
// is followed by a quiet one, it runs debug.FreeOSMemory (a forced GC
// plus returning every free page), which costs a few milliseconds on the
// small heap left after a burst and nothing while the work goes on.
package memtrim

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Defaults: check every 2 s; a burst is 4 MiB allocated since the last
// trim; quiet is under 1 MiB allocated in one tick. RSS is back near its
// idle figure 2–4 s after the last transfer. (16 MiB left up to ~20 MB
// in a process whose last burst came soon after a trim, with the
// uplink's copies gone a transfer allocates little: tl-bench files.)
const (
	Tick  = 2 * time.Second
	Burst = 4 << 20
	Quiet = 1 << 20
)

// Trimmer decides when to return memory. Run it on its own goroutine.
type Trimmer struct {
	Tick         time.Duration
	Burst, Quiet uint64
	// Free returns memory to the OS (debug.FreeOSMemory; a test hook).
	Free func()

	sample []metrics.Sample
}

// New returns a Trimmer with the defaults.
func New() *Trimmer {
	return &Trimmer{Tick: Tick, Burst: Burst, Quiet: Quiet, Free: freeTwice}
}

func (t *Trimmer) allocated() uint64 {
	if t.sample == nil {
		t.sample = []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	}
	metrics.Read(t.sample)
	if t.sample[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return t.sample[0].Value.Uint64()
}

// Run trims until ctx is done.
func (t *Trimmer) Run(ctx context.Context) {
	tick := time.NewTicker(t.Tick)
	defer tick.Stop()
	last := t.allocated()
	base := last // the counter at the last trim
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := t.allocated()
		if t.Step(now-last, now-base) {
			base = t.allocated()
			now = base
		}
		last = now
	}
}

// Step is one tick's decision, given what was allocated during the tick
// and since the last trim: true when it trimmed.
func (t *Trimmer) Step(tick, sinceTrim uint64) bool {
	if tick >= t.Quiet || sinceTrim < t.Burst {
		return false
	}
	t.Free()
	return true
}

// freeTwice runs debug.FreeOSMemory twice: a sync.Pool keeps what it holds
// through one GC (its victim cache) and drops it at the next, so one
// forced GC left the pooled receive chunks of the yamux copy (up to a
// window per busy stream) and net/http's pooled buffers resident; the
// second GC finds them free and returns them. Both run on the small heap
// left after a burst (a few ms).
func freeTwice() {
	debug.FreeOSMemory()
	debug.FreeOSMemory()
}
