package threads

import (
	"bytes"
	"sync"
	"sync/atomic"
	"testing"
)

// The reserve is made: the process holds at least that many threads
// afterwards, and they stay (the runtime keeps idle threads).
func TestReserve(t *testing.T) {
	const n = 24
	got := Reserve(n)
	if got == 0 {
		t.Skip("no /proc/self/status")
	}
	if got < n {
		t.Fatalf("after Reserve(%d) the process has %d threads", n, got)
	}
	if again := Count(); again < n {
		t.Fatalf("the reserve did not stay: %d threads, want at least %d", again, n)
	}
}

// The gate never lets more than its size in, and everyone gets through.
func TestGateBounds(t *testing.T) {
	g := NewGate(3)
	var inside, most atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = g.Do(func() error {
				n := inside.Add(1)
				for {
					m := most.Load()
					if n <= m || most.CompareAndSwap(m, n) {
						break
					}
				}
				inside.Add(-1)
				return nil
			})
		}()
	}
	wg.Wait()
	if most.Load() > 3 || g.InUse() != 0 {
		t.Fatalf("at most %d inside a gate of 3, %d slots still taken", most.Load(), g.InUse())
	}
	var buf bytes.Buffer
	if _, err := g.Writer(&buf).Write([]byte("x")); err != nil || g.InUse() != 0 || buf.String() != "x" {
		t.Fatalf("gated writer: %v, %d in use", err, g.InUse())
	}
}

// A reserve made in the background is complete when WaitReserve returns:
// the reaper's forks wait on it, so the workload never starts first.
func TestReserveInBackground(t *testing.T) {
	const n = 40 // more than TestReserve's, so this reserve has work to do
	done := make(chan int, 1)
	ReserveInBackground(n, nil, func(got int) { done <- got })
	WaitReserve()
	got := Count()
	if got == 0 {
		t.Skip("no /proc/self/status")
	}
	if got < n {
		t.Fatalf("WaitReserve returned with %d threads, want at least %d", got, n)
	}
	if reported := <-done; reported < n {
		t.Fatalf("done reported %d threads, want at least %d", reported, n)
	}
	WaitReserve() // made: returns at once
}
