package uplink

import "encoding/json"

// A lifecycle stream (KindLifecycle) carries one call: after the agent's
// OK reply the proxy writes a LifecycleCall as one JSON value (at most
// MaxLifecycleBody bytes), the agent answers one LifecycleAnswer and
// half-closes; the proxy closes once it has read it (the agent acts on
// some calls only then: a resume's redial must not cut the answer).
type LifecycleCall struct {
	Op      string          `json:"op"` // prepare, resume or status
	Request json.RawMessage `json:"request,omitempty"`
}

// LifecycleAnswer is the HTTP status and JSON body the call answers with.
type LifecycleAnswer struct {
	Status int             `json:"status"`
	Body   json.RawMessage `json:"body"`
}

// MaxLifecycleBody bounds a call and an answer on the wire.
const MaxLifecycleBody = 64 << 10
