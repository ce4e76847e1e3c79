package pause

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// fakeClock is a settable clock for the detector's seam.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func TestGapBeyondSlackIsAPause(t *testing.T) {
	c := &fakeClock{t: time.Unix(1000, 0)}
	d := newDetector(500*time.Millisecond, 1500*time.Millisecond, c.now)
	d.ticking = true // as if Run were ticking
	ch, cancel := d.Subscribe()
	defer cancel()

	for range 10 { // ordinary ticks, a little late: no pause
		c.add(700 * time.Millisecond)
		d.observe()
	}
	if p, n := d.Paused(); p != 0 || n != 0 {
		t.Fatalf("late ticks within slack counted as a pause: %v in %d", p, n)
	}
	c.add(330 * time.Second) // frozen
	running := d.Now()
	if want := 7*time.Second + 500*time.Millisecond; running != want {
		t.Fatalf("running clock across a freeze: %v, want %v (the freeze must not count)", running, want)
	}
	select {
	case g := <-ch:
		if g.Length != 330*time.Second-500*time.Millisecond {
			t.Fatalf("gap length %v", g.Length)
		}
	default:
		t.Fatal("a subscriber must hear of the pause")
	}
	if _, n := d.Paused(); n != 1 {
		t.Fatalf("one freeze counted %d times (reader and ticker must not both count it)", n)
	}
}

func TestTimerCountsRunningTimeOnly(t *testing.T) {
	d := New(20*time.Millisecond, 30*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go d.Run(ctx)
	fired := make(chan struct{})
	tm := d.AfterFunc(50*time.Millisecond, func() { close(fired) })
	select {
	case <-fired:
	case <-time.After(10 * time.Second):
		t.Fatal("timer did not fire")
	}
	if tm.Stop() {
		t.Fatal("a fired timer is not active")
	}
}

func TestTimerStopAndReset(t *testing.T) {
	d := New(0, 0)
	var mu sync.Mutex
	n := 0
	tm := d.AfterFunc(time.Hour, func() { mu.Lock(); n++; mu.Unlock() })
	if !tm.Stop() {
		t.Fatal("an armed timer is active")
	}
	done := make(chan struct{})
	tm.f = func() { close(done) }
	tm.Reset(10 * time.Millisecond)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("reset timer did not fire")
	}
	mu.Lock()
	defer mu.Unlock()
	if n != 0 {
		t.Fatal("a stopped arming must not fire")
	}
}

func TestTimerRearmsAfterPause(t *testing.T) {
	c := &fakeClock{t: time.Unix(1000, 0)}
	d := newDetector(time.Second, time.Second, c.now)
	d.ticking = true
	fired := make(chan struct{}, 1)
	tm := &Timer{d: d, f: func() { fired <- struct{}{} }}
	tm.mu.Lock()
	tm.deadline = 5 * time.Second
	tm.gen = 1
	tm.mu.Unlock()
	// The real timer fires after a 60 s freeze: running time is still 0.
	c.add(60 * time.Second)
	tm.fire(1)
	select {
	case <-fired:
		t.Fatal("timer fired on a pause's wall time instead of running time")
	default:
	}
	tm.Stop()
}

// The Timer's rules in a synctest bubble's fake clock, with the detector
// ticking: it fires at exactly its running-time deadline, Reset counts
// from the Reset, and a stopped timer never fires.
func TestTimerInFakeTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := New(0, 0)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go d.Run(ctx)
		start := time.Now()
		at := make(chan time.Duration, 3)
		record := func() { at <- time.Since(start) }

		d.AfterFunc(5*time.Second, record)
		if got := <-at; got != 5*time.Second {
			t.Fatalf("rule broken: fires at its deadline: fired after %v, want 5s", got)
		}

		start = time.Now()
		tm := d.AfterFunc(5*time.Second, record)
		time.Sleep(2 * time.Second)
		if !tm.Reset(5 * time.Second) {
			t.Fatal("rule broken: an armed timer is active when Reset")
		}
		if got := <-at; got != 7*time.Second {
			t.Fatalf("rule broken: Reset counts from the Reset: fired after %v, want 7s", got)
		}

		stopped := d.AfterFunc(time.Second, record)
		stopped.Stop()
		time.Sleep(time.Hour)
		synctest.Wait()
		select {
		case got := <-at:
			t.Fatalf("rule broken: a stopped timer never fires: it fired at %v", got)
		default:
		}
		if p, n := d.Paused(); p != 0 || n != 0 {
			t.Fatalf("rule broken: ticking in a steady clock detects no pause: %v in %d", p, n)
		}
	})
}

// A resume call reports a pause the ticker could not see (a restored VM's
// monotonic clock stood still); after a detected one it is the same pause.
func TestInject(t *testing.T) {
	c := &fakeClock{t: time.Unix(1000, 0)}
	d := newDetector(500*time.Millisecond, 1500*time.Millisecond, c.now)
	d.ticking = true
	ch, cancel := d.Subscribe()
	defer cancel()
	if !d.Inject(time.Minute) {
		t.Fatal("an injected pause was not reported")
	}
	select {
	case g := <-ch:
		if g.Length != time.Minute {
			t.Fatalf("injected gap length %v", g.Length)
		}
	default:
		t.Fatal("a subscriber must hear of an injected pause")
	}
	if p, n := d.Paused(); p != 0 || n != 1 {
		t.Fatalf("paused %v in %d: an injected pause counts once and takes nothing off the running clock", p, n)
	}
	c.add(500 * time.Millisecond)
	d.observe()
	c.add(10 * time.Second) // a freeze the ticker sees
	d.observe()
	<-ch
	if d.Inject(10 * time.Second) {
		t.Fatal("a resume call right after a detected pause reported it twice")
	}
	for range 6 { // ordinary ticks, then a resume call
		c.add(400 * time.Millisecond)
		d.observe()
	}
	if !d.Inject(0) {
		t.Fatal("a later resume was not reported")
	}
}
