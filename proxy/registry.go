package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tensorlake/tl-agent/uplink"
)

// Errors from Registry.Open, mapped by the front doors to 404, 503 and 502.
var (
	ErrUnknownSandbox = errors.New("sandbox not found")
	ErrNotConnected   = errors.New("sandbox not connected")
)

// Registry is the set of known sandboxes and their live uplinks.
type Registry struct {
	mu    sync.Mutex
	known map[string]string   // id -> token; guarded by mu
	links map[string]*Link    // id -> live uplink; guarded by mu
	state map[string]*linkMem // id -> what the proxy remembers of its links; guarded by mu
	// changed is closed (and replaced) whenever a link registers, waking
	// WaitLink callers; guarded by mu.
	changed chan struct{}
	// fake keys the v2 proof for unknown ids, so that their answers look
	// like a known id's (the uplink port does not tell which ids exist).
	fake []byte
	// quiet is BaseTokenQuiet; a field so unit tests can shorten it.
	quiet time.Duration
	// started is when the registry was made (the proxy's start).
	started time.Time

	// onChange is called (outside mu) when a sandbox's link comes or goes,
	// so HTTP transports can drop pooled streams of a dead link.
	onChange func(id string)
	// count wraps each opened stream to count its bytes (the metrics);
	// nil counts nothing. Set before use.
	count func(c net.Conn, kind string) net.Conn
}

// linkMem is the proxy's memory of one sandbox's links (lost when the
// proxy restarts, which then accepts the base token again).
type linkMem struct {
	secret   []byte    // the current link secret, derived at the last v2 welcome
	lastSeen time.Time // when its last link ended
	v2       bool      // it has spoken version 2: a v1 hello for it is a downgrade
}

// BaseTokenQuiet is how long after a sandbox's last link ended a v2
// registration that proves only the base token is refused. A live agent
// resumes with its link secret; only a rebooted one (which lost it) needs
// the token, and it gets in once this long has passed. Code inside the
// sandbox can read the token, so this is what keeps it from posing as the
// sandbox while the real agent is briefly away.
const BaseTokenQuiet = 20 * time.Second

// LinkWait is how long a request for a sandbox whose agent is reconnecting
// waits for the link before it is answered 503. An agent counts as
// reconnecting when its last link ended less than ReconnectWindow ago
// without a goodbye, or the proxy itself started less than that ago (its
// agents are coming back); any other sandbox is answered 503 at once.
const (
	LinkWait        = 5 * time.Second
	ReconnectWindow = 60 * time.Second
)

// Link is one connected agent.
type Link struct {
	ID           string
	Remote       string
	AgentVersion string
	Since        time.Time
	Protocol     int  // uplink protocol version
	Resumed      bool // v2: proved a link secret, not the base token
	bye          bool // said goodbye (orderly shutdown); guarded by Registry.mu
	sess         *yamux.Session
}

// NewRegistry returns a registry of the sandboxes in cfg.
func NewRegistry(cfg *Config) *Registry {
	r := &Registry{known: map[string]string{}, links: map[string]*Link{}, state: map[string]*linkMem{},
		changed: make(chan struct{}), fake: uplink.NewNonce(), quiet: BaseTokenQuiet, started: time.Now()}
	for id, s := range cfg.Sandboxes {
		r.known[id] = s.Token
		r.state[id] = &linkMem{}
	}
	return r
}

// Known reports whether id is a configured sandbox.
func (r *Registry) Known(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.known[id]
	return ok
}

// tokenOrFake returns the uplink token of id, or for an unknown id a
// random one, so that checking it costs the same.
func (r *Registry) tokenOrFake(id string) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	if t, ok := r.known[id]; ok {
		return []byte(t)
	}
	return r.fake
}

// v2Key returns the key a v2 hello asks the proxy to prove: the token (or,
// for an unknown id, the fake key), or the current link secret when its key
// id matches. ok is false for a link key the proxy does not hold.
func (r *Registry) v2Key(h uplink.Hello) (key []byte, ok bool) {
	if h.Key == uplink.KeyToken {
		return r.tokenOrFake(h.SandboxID), true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.state[h.SandboxID]
	if m == nil || m.secret == nil || !uplink.TokenEqual(uplink.KeyID(m.secret), h.KeyID) {
		return nil, false
	}
	return m.secret, true
}

// Link returns the live link of id, or nil.
func (r *Registry) Link(id string) *Link {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.liveLocked(id)
}

func (r *Registry) liveLocked(id string) *Link {
	l := r.links[id]
	if l != nil && l.sess.IsClosed() {
		return nil
	}
	return l
}

// WaitLink returns the live link of id, waiting up to d (or until ctx
// ends) for an agent that is reconnecting; nil when none came, at once
// when the agent is not reconnecting (see LinkWait).
func (r *Registry) WaitLink(ctx context.Context, id string, d time.Duration) *Link {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		r.mu.Lock()
		l, ch, back := r.liveLocked(id), r.changed, r.reconnectingLocked(id)
		r.mu.Unlock()
		if l != nil || !back {
			return l
		}
		select {
		case <-ch:
		case <-t.C:
			return nil
		case <-ctx.Done():
			return nil
		}
	}
}

// reconnectingLocked reports whether id's agent may be on its way back: a
// link that ended (or died unnoticed) recently without a goodbye, or a
// proxy that has just started.
func (r *Registry) reconnectingLocked(id string) bool {
	now := time.Now()
	if now.Sub(r.started) < ReconnectWindow || r.links[id] != nil {
		return true
	}
	m := r.state[id]
	return m != nil && !m.lastSeen.IsZero() && now.Sub(m.lastSeen) < ReconnectWindow
}

// SandboxState is one known sandbox as the status route shows it.
type SandboxState struct {
	ID           string `json:"id"`
	Connected    bool   `json:"connected"`
	Since        int64  `json:"connected_since,omitempty"` // Unix ms
	Remote       string `json:"remote,omitempty"`
	AgentVersion string `json:"agent_version,omitempty"`
	Protocol     int    `json:"protocol,omitempty"` // the live link's uplink protocol version
	Resumed      bool   `json:"resumed,omitempty"`  // the live link proved a link secret (v2), not the base token
}

// Snapshot lists the known sandboxes that allow accepts (nil: all) with
// their live link, sorted by id.
func (r *Registry) Snapshot(allow func(id string) bool) []SandboxState {
	r.mu.Lock()
	out := make([]SandboxState, 0, len(r.known))
	for id := range r.known {
		if allow != nil && !allow(id) {
			continue
		}
		e := SandboxState{ID: id}
		if l := r.liveLocked(id); l != nil {
			e.Connected, e.Since, e.Remote, e.AgentVersion = true, l.Since.UnixMilli(), l.Remote, l.AgentVersion
			e.Protocol, e.Resumed = l.Protocol, l.Resumed
		}
		out = append(out, e)
	}
	r.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// registerV1 makes l, a version 1 link, the link of its sandbox. If a live
// link exists it is pinged: an answer means a real duplicate (refused);
// silence means the old link is dead and not yet noticed, so the new one
// replaces it. The swap is a compare-and-swap: two hellos racing for one
// id cannot both pass. A sandbox that has spoken v2 is refused v1.
func (r *Registry) registerV1(l *Link) error {
	r.mu.Lock()
	if m := r.state[l.ID]; m != nil && m.v2 {
		r.mu.Unlock()
		return fmt.Errorf("sandbox %s has spoken protocol v2 since the proxy started: v1 refused", l.ID)
	}
	old := r.liveLocked(l.ID)
	r.mu.Unlock()
	if old != nil && pingWithin(old.sess, 2*time.Second) {
		return fmt.Errorf("sandbox %s already has a live uplink from %s", l.ID, old.Remote)
	}
	r.mu.Lock()
	if cur := r.liveLocked(l.ID); cur != old {
		r.mu.Unlock()
		return fmt.Errorf("sandbox %s registered concurrently from another connection", l.ID)
	}
	r.setLocked(l, old)
	return nil
}

// registerV2 makes l, a version 2 link that proved key (the base token, or
// the link secret when resumed), the link of its sandbox, and adopts next
// as its link secret. Checks and swap happen under one lock hold, so of
// two racing hellos at most one passes. dialed (the proxy dialed the
// agent) skips the base token's quiet window.
func (r *Registry) registerV2(l *Link, resumed, dialed bool, key, next []byte) error {
	r.mu.Lock()
	m := r.state[l.ID]
	if m == nil {
		r.mu.Unlock()
		return errors.New(uplink.BadCredentials)
	}
	old := r.liveLocked(l.ID)
	switch {
	case resumed && !uplink.MACEqual(m.secret, key):
		r.mu.Unlock()
		return errResume
	case !resumed && old != nil:
		r.mu.Unlock()
		return fmt.Errorf("sandbox %s has a live uplink from %s: a registration with the base token is refused (resume with the link secret)", l.ID, old.Remote)
	case !resumed && !dialed && r.links[l.ID] != nil && !r.links[l.ID].bye:
		// Its session has closed but unregister has not run yet: just seen.
		r.mu.Unlock()
		return fmt.Errorf("sandbox %s was connected a moment ago: the base token is accepted again %v after its last link ended", l.ID, r.quiet)
	case !resumed && !dialed && !m.lastSeen.IsZero() && time.Since(m.lastSeen) < r.quiet:
		ago := time.Since(m.lastSeen).Round(time.Second)
		r.mu.Unlock()
		return fmt.Errorf("sandbox %s was connected %v ago: the base token is accepted again %v after its last link ended", l.ID, ago, r.quiet)
	}
	m.secret, m.v2 = next, true
	r.setLocked(l, old)
	return nil
}

var errResume = errors.New("link secret no longer current")

// setLocked installs l (closing old), wakes waiters and unlocks r.mu.
func (r *Registry) setLocked(l, old *Link) {
	r.links[l.ID] = l
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
	if old != nil {
		old.sess.Close()
	}
	if r.onChange != nil {
		r.onChange(l.ID)
	}
}

// departed notes that l's agent said goodbye: when l ends, the sandbox
// counts as not recently seen (its reboot may use the base token).
func (r *Registry) departed(l *Link) {
	r.mu.Lock()
	l.bye = true
	r.mu.Unlock()
}

// unregister removes l if it is still the sandbox's link, and notes when
// the sandbox was last seen (never, after a goodbye).
func (r *Registry) unregister(l *Link) {
	r.mu.Lock()
	if r.links[l.ID] == l {
		delete(r.links, l.ID)
		if m := r.state[l.ID]; m != nil {
			m.lastSeen = time.Now()
			if l.bye {
				m.lastSeen = time.Time{}
			}
		}
	}
	r.mu.Unlock()
	if r.onChange != nil {
		r.onChange(l.ID)
	}
}

func pingWithin(s *yamux.Session, d time.Duration) bool {
	done := make(chan error, 1)
	go func() { _, err := s.Ping(); done <- err }()
	select {
	case err := <-done:
		return err == nil
	case <-time.After(d):
		return false
	}
}

// replyTimeout bounds the agent's answer to a stream header; a dial to a
// target inside the sandbox is bounded by the agent at 5 s.
const replyTimeout = 15 * time.Second

// Open opens a stream to target h in sandbox id and waits for the agent's
// reply. Errors: ErrUnknownSandbox, ErrNotConnected, *uplink.ReplyError.
func (r *Registry) Open(ctx context.Context, id string, h uplink.Header) (net.Conn, error) {
	if !r.Known(id) {
		return nil, ErrUnknownSandbox
	}
	l := r.Link(id)
	if l == nil {
		return nil, ErrNotConnected
	}
	s, err := l.sess.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotConnected, err)
	}
	c := uplink.Wrap(s)
	deadline := time.Now().Add(replyTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = c.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	if err := uplink.WriteHeader(c, h); err != nil {
		stop()
		c.Close()
		return nil, fmt.Errorf("%w: %v", ErrNotConnected, err)
	}
	if err := uplink.ReadReply(c); err != nil {
		stop()
		c.Close()
		var re *uplink.ReplyError
		if errors.As(err, &re) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: no reply: %v", ErrNotConnected, err)
	}
	if !stop() {
		c.Close()
		return nil, ctx.Err()
	}
	_ = c.SetDeadline(time.Time{})
	if r.count != nil {
		c = r.count(c, h.Kind)
	}
	return c, nil
}
