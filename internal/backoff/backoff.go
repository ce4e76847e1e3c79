// Package backoff is the one definition of retry back-off in tl-agent and
// tl-proxy: capped exponential, optionally jittered. Every retry loop uses
// it (the uplink redial, the proxy's --connect dialer, the accept loops,
// a supervised process's restarts), so "how long until the next try" has
// one answer and one test.
//
// A Backoff only computes waits; the caller sleeps, in whatever clock it
// counts (a timer, a pause-aware timer, a select on ctx). It is not safe
// for concurrent use: each retry loop owns its own.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Backoff yields Initial, 2×Initial, 4×Initial, ... capped at Max, one per
// Next, until Reset starts it over. The zero Attempt is the first wait.
type Backoff struct {
	// Initial is the first wait. Zero or negative: every wait is zero.
	Initial time.Duration
	// Max caps every wait. Below Initial (or zero): Initial is the cap.
	Max time.Duration
	// Jitter, when set, draws each wait uniformly from [d/2, d] instead of
	// d, so many clients cut off together do not retry in lockstep.
	Jitter bool

	attempt int
}

// Next returns the wait before the next try and counts the attempt.
func (b *Backoff) Next() time.Duration {
	d := b.Peek()
	b.attempt++
	if b.Jitter && d > 0 {
		d = d/2 + rand.N(d/2+1)
	}
	return d
}

// Peek returns the (unjittered) wait Next would return, without counting it.
func (b *Backoff) Peek() time.Duration {
	if b.Initial <= 0 {
		return 0
	}
	limit := max(b.Max, b.Initial)
	d := b.Initial
	// Doubling stops at the cap, so a long outage never overflows.
	for i := 0; i < b.attempt && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// Attempts is how many waits Next has returned since the last Reset.
func (b *Backoff) Attempts() int { return b.attempt }

// Reset makes the next wait Initial again: the thing retried has worked.
func (b *Backoff) Reset() { b.attempt = 0 }
