package memtrim

import "testing"

// TestStep: a trim only once a burst is followed by a quiet tick, and not
// again until the next burst.
func TestStep(t *testing.T) {
	n := 0
	tr := &Trimmer{Burst: 100, Quiet: 10, Free: func() { n++ }}
	steps := []struct {
		tick, since uint64
		want        bool
	}{
		{5, 5, false},     // idle, no burst
		{200, 205, false}, // the burst itself
		{50, 255, false},  // still busy
		{3, 258, true},    // quiet after a burst: trim
		{3, 3, false},     // quiet, no new burst
	}
	for i, s := range steps {
		if got := tr.Step(s.tick, s.since); got != s.want {
			t.Fatalf("step %d: %v, want %v", i, got, s.want)
		}
	}
	if n != 1 {
		t.Fatalf("freed %d times, want 1", n)
	}
}
