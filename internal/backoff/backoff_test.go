package backoff

import (
	"context"
	"testing"
	"testing/synctest"
	"time"
)

func TestBackoff(t *testing.T) {
	t.Run("doubles from Initial and stops at Max", func(t *testing.T) {
		b := Backoff{Initial: 100 * time.Millisecond, Max: time.Second}
		want := []time.Duration{100, 200, 400, 800, 1000, 1000}
		for i, w := range want {
			if got := b.Next(); got != w*time.Millisecond {
				t.Fatalf("wait %d: got %v, want %v", i, got, w*time.Millisecond)
			}
		}
		if b.Attempts() != len(want) {
			t.Fatalf("attempts: %d, want %d", b.Attempts(), len(want))
		}
	})
	t.Run("Reset starts over at Initial", func(t *testing.T) {
		b := Backoff{Initial: 5 * time.Millisecond, Max: time.Second}
		b.Next()
		b.Next()
		b.Reset()
		if got := b.Next(); got != 5*time.Millisecond {
			t.Fatalf("after Reset: %v", got)
		}
	})
	t.Run("a cap below Initial is Initial", func(t *testing.T) {
		b := Backoff{Initial: time.Second, Max: time.Millisecond}
		for range 3 {
			if got := b.Next(); got != time.Second {
				t.Fatalf("got %v, want 1s", got)
			}
		}
	})
	t.Run("zero Initial never waits", func(t *testing.T) {
		var b Backoff
		if got := b.Next(); got != 0 {
			t.Fatalf("zero value waited %v", got)
		}
	})
	t.Run("a long outage does not overflow", func(t *testing.T) {
		b := Backoff{Initial: time.Millisecond, Max: time.Hour}
		for range 10000 {
			if got := b.Next(); got <= 0 || got > time.Hour {
				t.Fatalf("wait %v outside (0, 1h] after %d attempts", got, b.Attempts())
			}
		}
	})
	t.Run("Jitter keeps each wait in [d/2, d]", func(t *testing.T) {
		b := Backoff{Initial: 200 * time.Millisecond, Max: 5 * time.Second, Jitter: true}
		for i := range 50 {
			d := b.Peek()
			got := b.Next()
			if got < d/2 || got > d {
				t.Fatalf("wait %d: %v outside [%v, %v]", i, got, d/2, d)
			}
		}
	})
}

// A retry loop that sleeps its Backoff's waits, in a synctest bubble: the
// fake clock shows the retries land exactly at the cumulative waits, with
// no real sleeping.
func TestBackoffPacesARetryLoop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		b := Backoff{Initial: 100 * time.Millisecond, Max: 400 * time.Millisecond}
		var at []time.Duration
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		for len(at) < 5 {
			tm := time.NewTimer(b.Next())
			select {
			case <-ctx.Done():
				t.Fatal("cancelled")
			case <-tm.C:
			}
			at = append(at, time.Since(start))
		}
		want := []time.Duration{100, 300, 700, 1100, 1500}
		for i, w := range want {
			if at[i] != w*time.Millisecond {
				t.Fatalf("retry %d at %v, want %v (all: %v)", i, at[i], w*time.Millisecond, at)
			}
		}
	})
}
