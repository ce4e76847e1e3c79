package proxy

import (
	"fmt"
	"testing"
	"time"
)

// fakeClock is a loginLimiter's clock, moved by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func testLimiter(failures, sources int) (*loginLimiter, *fakeClock) {
	ll := newLoginLimiter(Limits{LoginFailures: failures, LoginWindow: time.Minute, LoginSources: sources})
	c := &fakeClock{t: time.Unix(1e9, 0)}
	ll.now = c.now
	return ll, c
}

// TestLoginLimiterPerSource: a source gets its burst of failures, then
// 429 with the wait for one token; the burst refills over the window; a
// good login gives its token back; other sources are untouched; the
// refusal is logged once a window, with the count left out.
func TestLoginLimiterPerSource(t *testing.T) {
	ll, clock := testLimiter(10, 100)
	const a, b = "192.0.2.1:4000", "192.0.2.2:4000"
	for i := range 10 {
		if give, _, _, _ := ll.take(a); give == nil {
			t.Fatalf("failure %d refused inside the burst", i+1)
		}
	}
	give, wait, log, _ := ll.take(a)
	if give != nil || wait != 6*time.Second || !log {
		t.Fatalf("11th failure: give %v, wait %v, log %v; want refused, 6s, logged", give != nil, wait, log)
	}
	for range 5 {
		if _, _, log, _ := ll.take(a); log {
			t.Fatal("a second refusal logged in one window")
		}
	}
	if give, _, _, _ := ll.take(b); give == nil {
		t.Fatal("another source refused by a's failures")
	}
	clock.t = clock.t.Add(6 * time.Second)
	give, _, _, _ = ll.take(a)
	if give == nil {
		t.Fatal("no token after 6 s (10 a minute)")
	}
	give() // a good login: its token comes back
	if give, _, _, _ := ll.take(a); give == nil {
		t.Fatal("a good login's token was not given back")
	}
	clock.t = clock.t.Add(time.Minute)
	_, _, _, _ = ll.take(a)
	for range 9 {
		ll.take(a)
	}
	_, _, log, unlogged := ll.take(a)
	if !log || unlogged != 5 {
		t.Fatalf("next window's refusal: log %v, unlogged %d; want logged with the 5 left out", log, unlogged)
	}
}

// TestLoginLimiterTableBound: a flood of sources never grows the table
// past its bound; sources past it share one bucket; sources whose bucket
// refilled are dropped to make room, and a new source is tracked again.
func TestLoginLimiterTableBound(t *testing.T) {
	ll, clock := testLimiter(2, 64)
	for i := range 10000 {
		ll.take(fmt.Sprintf("10.%d.%d.%d:1", i>>16&255, i>>8&255, i&255))
	}
	if n := ll.len(); n != 64 {
		t.Fatalf("table holds %d sources, bound 64", n)
	}
	if give, _, _, _ := ll.take("198.51.100.7:1"); give != nil {
		t.Fatal("a source past the bound got a bucket of its own while the table is full of failures")
	}
	clock.t = clock.t.Add(time.Minute)
	if give, _, _, _ := ll.take("198.51.100.7:1"); give == nil {
		t.Fatal("refilled sources were not dropped to make room")
	}
	if n := ll.len(); n != 1 {
		t.Fatalf("after the refill the table holds %d sources, want the 1 new", n)
	}
}

// TestLoginSource: IPv4 by address (mapped ones too), IPv6 by /64.
func TestLoginSource(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1:80":              "192.0.2.1",
		"[::ffff:192.0.2.1]:80":     "192.0.2.1",
		"[2001:db8:1:2:3:4:5:6]:80": "2001:db8:1:2::/64",
		"[2001:db8:1:2::9]:80":      "2001:db8:1:2::/64",
		"[2001:db8:1:3::9]:80":      "2001:db8:1:3::/64",
		"@":                         "@",
	} {
		if got := loginSource(in); got != want {
			t.Errorf("loginSource(%q) = %q, want %q", in, got, want)
		}
	}
}
