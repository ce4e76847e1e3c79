package proxy

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// SSHLimits bound what one user of the SSH front door can hold in the
// proxy (docs/ssh.md, "Bounds of the proxy's front door"). x/crypto gives
// every channel a fixed 2 MiB receive window, so a channel can pin up to
// 2 MiB of unread data in each direction; the bound on memory therefore
// comes from counting channels. Zero fields take the defaults below.
type SSHLimits struct {
	// HandshakeSeconds bounds key exchange, authentication and reaching
	// the sandbox; it is lifted only once a key has signed.
	HandshakeSeconds float64 `json:"handshake_timeout_seconds,omitempty"`
	// ChannelsPerConn caps the channels open at once on one connection,
	// counted for each direction (the user's, and forwards the sandbox
	// opens back).
	ChannelsPerConn int `json:"channels_per_conn,omitempty"`
	// ChannelsPerKey caps the channels the user opens over all
	// connections authenticated with one key.
	ChannelsPerKey int `json:"channels_per_key,omitempty"`
	// UnstartedPerConn and UnstartedPerKey cap session channels that have
	// not yet asked for a shell, command or subsystem; the proxy accepted
	// them and holds what the client sends until then.
	UnstartedPerConn int `json:"unstarted_per_conn,omitempty"`
	UnstartedPerKey  int `json:"unstarted_per_key,omitempty"`
	// UnstartedSeconds is how long a session channel may stay unstarted
	// before the proxy closes it.
	UnstartedSeconds float64 `json:"unstarted_timeout_seconds,omitempty"`
	// SlotWaitSeconds is how long a channel over a cap (channels or
	// unstarted sessions) waits, not yet accepted, for a slot before it is
	// refused.
	SlotWaitSeconds float64 `json:"slot_wait_seconds,omitempty"`
}

// DefaultSSHLimits: OpenSSH's sshd allows 10 sessions per connection
// (MaxSessions) and counts forwards apart; 64 channels per connection
// leave room for an IDE's sessions plus a browser's worth of -D forwards.
// Worst case held in the proxy: 128 channels x 2 x 2 MiB = 512 MiB for one
// key, 16 x 2 MiB for its unstarted sessions.
var DefaultSSHLimits = SSHLimits{
	HandshakeSeconds: 30,
	ChannelsPerConn:  64,
	ChannelsPerKey:   128,
	UnstartedPerConn: 4,
	UnstartedPerKey:  16,
	UnstartedSeconds: 10,
	// A burst of short sessions (parallel `ssh host cmd`) frees slots
	// within milliseconds; 2 s covers a loaded machine.
	SlotWaitSeconds: 2,
}

// validate checks l and fills its zero fields with the defaults.
func (l *SSHLimits) validate() error {
	d := DefaultSSHLimits
	for _, f := range []struct {
		name string
		v    *float64
		def  float64
	}{
		{"handshake_timeout_seconds", &l.HandshakeSeconds, d.HandshakeSeconds},
		{"unstarted_timeout_seconds", &l.UnstartedSeconds, d.UnstartedSeconds},
		{"slot_wait_seconds", &l.SlotWaitSeconds, d.SlotWaitSeconds},
	} {
		if *f.v < 0 {
			return fmt.Errorf("config: ssh_limits.%s: %v is negative", f.name, *f.v)
		}
		if *f.v == 0 {
			*f.v = f.def
		}
	}
	for _, f := range []struct {
		name string
		v    *int
		def  int
	}{
		{"channels_per_conn", &l.ChannelsPerConn, d.ChannelsPerConn},
		{"channels_per_key", &l.ChannelsPerKey, d.ChannelsPerKey},
		{"unstarted_per_conn", &l.UnstartedPerConn, d.UnstartedPerConn},
		{"unstarted_per_key", &l.UnstartedPerKey, d.UnstartedPerKey},
	} {
		if *f.v < 0 {
			return fmt.Errorf("config: ssh_limits.%s: %d is negative", f.name, *f.v)
		}
		if *f.v == 0 {
			*f.v = f.def
		}
	}
	return nil
}

func (l *SSHLimits) handshakeTimeout() time.Duration {
	return time.Duration(l.HandshakeSeconds * float64(time.Second))
}

func (l *SSHLimits) slotWait() time.Duration {
	return time.Duration(l.SlotWaitSeconds * float64(time.Second))
}

func (l *SSHLimits) unstartedTimeout() time.Duration {
	return time.Duration(l.UnstartedSeconds * float64(time.Second))
}

// quota counts uses per name (a key's fingerprint; "" for a quota of one
// connection) against a cap. Safe for concurrent use.
type quota struct {
	max int

	mu      sync.Mutex
	n       map[string]int // guarded by mu
	changed chan struct{}  // closed and replaced at each give; guarded by mu
}

func newQuota(max int) *quota {
	return &quota{max: max, n: map[string]int{}, changed: make(chan struct{})}
}

// wake returns a channel closed at the next give.
func (q *quota) wake() <-chan struct{} {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.changed
}

// take counts one use of name, or reports false at the cap.
func (q *quota) take(name string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.n[name] >= q.max {
		return false
	}
	q.n[name]++
	return true
}

// give returns a use taken with take.
func (q *quota) give(name string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.n[name]--; q.n[name] <= 0 {
		delete(q.n, name)
	}
	close(q.changed)
	q.changed = make(chan struct{})
}

// takeBoth takes one use of a connection's quota and of its key's, or
// neither. It returns a release function and "" or, at a cap, which one.
func takeBoth(conn, key *quota, keyName string) (release func(), full string) {
	if !conn.take("") {
		return nil, "connection"
	}
	if !key.take(keyName) {
		conn.give("")
		return nil, "key"
	}
	var once sync.Once
	return func() { once.Do(func() { key.give(keyName); conn.give("") }) }, ""
}

// takeBothWait is takeBoth that waits up to wait (or until ctx ends) for
// a use to be given back. Waiting costs the proxy only a goroutine: the
// channel is not accepted yet, so the client has no window to send into,
// and the waiters are already bounded by the channel caps. A burst of
// sessions (200 parallel `ssh host cmd`, a ControlMaster fan-out) is then
// served in turn instead of refused.
func takeBothWait(ctx context.Context, conn, key *quota, keyName string, wait time.Duration) (release func(), full string) {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		connWake, keyWake := conn.wake(), key.wake()
		if release, full = takeBoth(conn, key, keyName); full == "" {
			return release, ""
		}
		select {
		case <-connWake:
		case <-keyWake:
		case <-deadline.C:
			return nil, full
		case <-ctx.Done():
			return nil, full
		}
	}
}

// channelCap is the channel cap named by takeBoth's answer.
func (l *SSHLimits) channelCap(full string) int {
	if full == "key" {
		return l.ChannelsPerKey
	}
	return l.ChannelsPerConn
}

// admitFunc takes a slot for a new channel: a release function, or the
// refusal's message.
type admitFunc func() (release func(), refusal string)

// connAdmit admits up to max channels at once: the sandbox's direction
// of one connection, which has no key to count against.
func connAdmit(max int) admitFunc {
	q := newQuota(max)
	return func() (func(), string) {
		if !q.take("") {
			return nil, fmt.Sprintf("tl-proxy: too many channels open on this connection (limit %d)", max)
		}
		var once sync.Once
		return func() { once.Do(func() { q.give("") }) }, ""
	}
}
