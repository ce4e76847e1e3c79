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
	known map[string]string // id -> token; guarded by mu
	links map[string]*Link  // id -> live uplink; guarded by mu

	// onChange is called (outside mu) when a sandbox's link comes or goes,
	// so HTTP transports can drop pooled streams of a dead link.
	onChange func(id string)
}

// Link is one connected agent.
type Link struct {
	ID           string
	Remote       string
	AgentVersion string
	Since        time.Time
	sess         *yamux.Session
}

// NewRegistry returns a registry of the sandboxes in cfg.
func NewRegistry(cfg *Config) *Registry {
	r := &Registry{known: map[string]string{}, links: map[string]*Link{}}
	for id, s := range cfg.Sandboxes {
		r.known[id] = s.Token
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

// token returns the uplink token of id.
func (r *Registry) token(id string) (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.known[id]
	return t, ok
}

// Link returns the live link of id, or nil.
func (r *Registry) Link(id string) *Link {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.links[id]
	if l != nil && l.sess.IsClosed() {
		return nil
	}
	return l
}

// Links lists live links, for the proxy's status page.
func (r *Registry) Links() []*Link {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*Link, 0, len(r.links))
	for _, l := range r.links {
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// register makes l the link of its sandbox. If a live link exists, it is
// pinged: an answer means a real duplicate (refused); silence means the old
// link is dead and not yet noticed (the agent reconnected first), so the
// new one replaces it.
func (r *Registry) register(l *Link) error {
	if old := r.Link(l.ID); old != nil {
		if pingWithin(old.sess, 2*time.Second) {
			return fmt.Errorf("sandbox %s already has a live uplink from %s", l.ID, old.Remote)
		}
		old.sess.Close()
	}
	r.mu.Lock()
	r.links[l.ID] = l
	r.mu.Unlock()
	if r.onChange != nil {
		r.onChange(l.ID)
	}
	return nil
}

// unregister removes l if it is still the sandbox's link.
func (r *Registry) unregister(l *Link) {
	r.mu.Lock()
	if r.links[l.ID] == l {
		delete(r.links, l.ID)
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
	return c, nil
}
