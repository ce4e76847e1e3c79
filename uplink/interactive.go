package uplink

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

// InteractiveHold is how long after a small write (under WriteChunk: a
// keystroke, an API request or answer) on one stream the other streams of
// the session keep their frames at WriteChunk. A keystroke queues behind
// at most one frame of each busy stream, and on a loaded machine a 256 KiB
// frame costs the receiving process several times a 32 KiB one before it
// reaches the keystroke; a lone bulk transfer keeps its big frames.
const InteractiveHold = time.Second

// sessionState is what the streams of one session share.
type sessionState struct {
	lastSmall atomic.Int64  // when a stream last made a small write (unix ns)
	by        atomic.Uint32 // that stream's id
}

// sessions maps each live *yamux.Session to its state; entries of closed
// sessions are dropped whenever a new session is added (sessions are few:
// one per uplink).
var (
	sessionsMu sync.Mutex
	sessions   = map[*yamux.Session]*sessionState{}
)

func stateOf(sess *yamux.Session) *sessionState {
	sessionsMu.Lock()
	defer sessionsMu.Unlock()
	if st, ok := sessions[sess]; ok {
		return st
	}
	for k := range sessions {
		if k.IsClosed() {
			delete(sessions, k)
		}
	}
	st := &sessionState{}
	sessions[sess] = st
	return st
}

func (st *sessionState) small(id uint32) {
	st.by.Store(id)
	st.lastSmall.Store(time.Now().UnixNano())
}

// interactive is true when another stream than id wrote small lately.
func (st *sessionState) interactive(id uint32) bool {
	last := st.lastSmall.Load()
	return last != 0 && st.by.Load() != id && time.Now().UnixNano()-last < int64(InteractiveHold)
}
