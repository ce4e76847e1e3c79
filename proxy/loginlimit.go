package proxy

import (
	"math"
	"net"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// loginLimiter bounds failed browser logins per source address: a token
// bucket per source of LoginFailures tokens, refilled at LoginFailures
// per LoginWindow. A login takes a token before its key is compared (so
// parallel guesses cannot outrun the bucket), and a good key gives it
// back: only failures count, and one source's failures never slow
// another's login. Without it an unauthenticated peer could guess keys
// as fast as the proxy compares them and write a log line for each.
//
// The table is bounded: a source whose bucket is full again holds nothing
// and is dropped; when every entry still holds failures, sources beyond
// the bound share one overflow bucket, so many addresses (an IPv6 block)
// can neither grow the table nor get more than one more bucket's worth.
type loginLimiter struct {
	burst  float64       // LoginFailures: a bucket's size
	window time.Duration // LoginWindow: a bucket refills in it
	max    int           // LoginSources: entries in the table
	now    func() time.Time

	mu       sync.Mutex
	sources  map[string]*loginBucket // guarded by mu
	overflow loginBucket             // sources past max; guarded by mu
	swept    time.Time               // the last sweep of the full table; guarded by mu
}

// loginSweepEvery spaces out the sweeps of a full table.
const loginSweepEvery = time.Second

// loginBucket is one source's failures.
type loginBucket struct {
	tokens   float64
	at       time.Time // when tokens was last brought up to date
	loggedAt time.Time // the last refusal logged: one a window
	refused  int       // refusals since loggedAt, for the next log
}

func newLoginLimiter(l Limits) *loginLimiter {
	d := DefaultLimits()
	ll := &loginLimiter{burst: float64(l.LoginFailures), window: l.LoginWindow, max: l.LoginSources,
		now: time.Now, sources: map[string]*loginBucket{}}
	if ll.burst <= 0 {
		ll.burst = float64(d.LoginFailures)
	}
	if ll.window <= 0 {
		ll.window = d.LoginWindow
	}
	if ll.max <= 0 {
		ll.max = d.LoginSources
	}
	ll.overflow = loginBucket{tokens: ll.burst}
	return ll
}

// refill brings b up to now.
func (ll *loginLimiter) refill(b *loginBucket, now time.Time) {
	if !b.at.IsZero() {
		b.tokens = math.Min(ll.burst, b.tokens+now.Sub(b.at).Seconds()*ll.burst/ll.window.Seconds())
	}
	b.at = now
}

// bucket returns src's bucket, making room at the bound. Called with mu.
func (ll *loginLimiter) bucket(src string, now time.Time) *loginBucket {
	if b, ok := ll.sources[src]; ok {
		return b
	}
	if len(ll.sources) >= ll.max && now.Sub(ll.swept) >= loginSweepEvery {
		// At most one sweep a second: a flood of new sources must not
		// make every attempt walk the whole table.
		ll.swept = now
		for k, b := range ll.sources {
			if ll.refill(b, now); b.tokens >= ll.burst {
				delete(ll.sources, k) // full again: it holds nothing
			}
		}
	}
	if len(ll.sources) >= ll.max {
		return &ll.overflow
	}
	b := &loginBucket{tokens: ll.burst, at: now}
	ll.sources[src] = b
	return b
}

// take reserves a failure for a login from remote (an http.Request's
// RemoteAddr). ok false: refused, retry after wait, and log says whether
// this refusal is the one of its window to log (with the refusals left
// out before it). Otherwise give must be called if the login succeeds.
func (ll *loginLimiter) take(remote string) (give func(), wait time.Duration, log bool, unlogged int) {
	src := loginSource(remote)
	ll.mu.Lock()
	defer ll.mu.Unlock()
	now := ll.now()
	b := ll.bucket(src, now)
	ll.refill(b, now)
	if b.tokens >= 1 {
		b.tokens--
		return func() {
			ll.mu.Lock()
			defer ll.mu.Unlock()
			ll.refill(b, ll.now())
			b.tokens = math.Min(ll.burst, b.tokens+1)
		}, 0, false, 0
	}
	wait = time.Duration((1 - b.tokens) * float64(ll.window) / ll.burst)
	b.refused++
	if now.Sub(b.loggedAt) < ll.window && !b.loggedAt.IsZero() {
		return nil, wait, false, 0
	}
	unlogged, b.refused, b.loggedAt = b.refused-1, 0, now
	return nil, wait, true, unlogged
}

func (ll *loginLimiter) len() int {
	ll.mu.Lock()
	defer ll.mu.Unlock()
	return len(ll.sources)
}

// logRefusal is take's one log line of a window for a source; shared
// says the source had no bucket of its own (the table was full).
func (ll *loginLimiter) logRefusal(log zerolog.Logger, remote, origin string, unlogged int) {
	src := loginSource(remote)
	ll.mu.Lock()
	_, tracked := ll.sources[src]
	ll.mu.Unlock()
	log.Warn().Str("remote", remote).Str("source", src).Str("origin", origin).Bool("shared", !tracked).
		Int("refused_unlogged", unlogged).Int("failures", int(ll.burst)).Dur("window", ll.window).
		Msg("browser login: too many failed attempts from this source; refusing it for now")
}

// loginSource is the source a login is counted under: the IP, or for
// IPv6 its /64 (one host's, or one site's, usual allocation: an attacker
// gets a whole /64 as easily as one address).
func loginSource(remote string) string {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return host
	}
	if v4 := ip.To4(); v4 != nil {
		return v4.String()
	}
	return ip.Mask(net.CIDRMask(64, 128)).String() + "/64"
}
