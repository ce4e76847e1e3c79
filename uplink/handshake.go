// Package uplink is the wire protocol between tl-agent and a sandbox proxy.
//
// One connection carries everything. It starts with a versioned handshake
// (Hello from the agent, Welcome from the proxy) and then runs yamux. Every
// user connection or request is one yamux stream opened by the proxy, which
// first writes a Header naming the stream's target; the agent answers with a
// Reply before any payload flows. See docs/uplink.md.
//
// Both sides import this package; it imports nothing of the project.
package uplink

import (
	"crypto/subtle"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Version is the protocol version this build speaks: 2, mutual
// challenge-response (auth.go). The proxy still accepts VersionLegacy (the
// token in clear in the hello) from agents of the previous release, and
// logs each such link; the agent speaks only Version.
const (
	Version       = 2
	VersionLegacy = 1
)

// magic opens every handshake frame so that a stray client (an HTTP probe, a
// port scanner) is told apart from an agent at the first bytes.
var magic = [4]byte{'T', 'L', 'U', 'P'}

// maxFrame bounds handshake and header frames: they carry ids and tokens,
// never payload, so anything larger is a protocol error.
const maxFrame = 4096

// Hello is the agent's first frame. In version 2 it carries no secret:
// Nonce is the agent's challenge, Key says which secret the peer must prove
// (KeyToken, or KeyLink with KeyID naming the link secret). Token and
// AgentVersion are version 1 only (v2 sends the agent's version in Proof,
// after the proxy has proved itself).
type Hello struct {
	Version      int    `json:"version"`
	SandboxID    string `json:"sandbox_id"`
	Token        string `json:"token,omitempty"`
	AgentVersion string `json:"agent_version,omitempty"`
	Nonce        string `json:"nonce,omitempty"`
	Key          string `json:"key,omitempty"`
	KeyID        string `json:"key_id,omitempty"`
}

// Welcome is the proxy's answer to Hello. OK false carries a refusal that
// the agent logs before backing off.
type Welcome struct {
	OK      bool   `json:"ok"`
	Code    string `json:"code,omitempty"`
	Error   string `json:"error,omitempty"`
	Version int    `json:"version"`
}

// Refusal codes sent in Welcome.Code. An unknown sandbox id is answered
// exactly as a wrong token (CodeBadToken), so the uplink port does not tell
// which ids exist; CodeUnknown is kept for old agents' logs only.
const (
	CodeBadVersion   = "BAD_VERSION"
	CodeBadToken     = "BAD_TOKEN"
	CodeUnknown      = "UNKNOWN_SANDBOX"
	CodeDuplicate    = "DUPLICATE_SANDBOX"
	CodeBadHandshake = "BAD_HANDSHAKE"
	// CodeResumeRefused: the link secret named by Hello.KeyID is not one
	// the proxy holds (it restarted, or the secret was rotated). The agent
	// drops that secret and retries at once with the next one or the token.
	CodeResumeRefused = "RESUME_REFUSED"
	// CodeBadProof is sent by the agent when the proxy's proof is wrong.
	CodeBadProof = "BAD_PROOF"
)

// ErrFrame reports a malformed frame: wrong magic, bad length or bad JSON.
var ErrFrame = errors.New("uplink: malformed frame")

// RefusedError is returned by the agent side when the proxy refuses it.
type RefusedError struct {
	Code, Msg string
	Err       error // ErrPeerProof when the agent refused its peer
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("uplink refused: %s: %s", e.Code, e.Msg)
}

func (e *RefusedError) Unwrap() error { return e.Err }

// writeFrame writes magic, version byte, u16 length and the JSON body.
func writeFrame(w io.Writer, v any) error { return writeFrameV(w, Version, v) }

func writeFrameV(w io.Writer, version byte, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(body) > maxFrame {
		return fmt.Errorf("%w: frame of %d bytes exceeds %d", ErrFrame, len(body), maxFrame)
	}
	buf := make([]byte, 0, 7+len(body))
	buf = append(buf, magic[:]...)
	buf = append(buf, version)
	buf = binary.BigEndian.AppendUint16(buf, uint16(len(body)))
	buf = append(buf, body...)
	_, err = w.Write(buf)
	return err
}

// readFrame reads one frame written by writeFrame into v. The version byte
// is returned separately so that a peer of another version still gets a
// readable refusal.
func readFrame(r io.Reader, v any) (byte, error) {
	var head [7]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return 0, err
	}
	if [4]byte(head[:4]) != magic {
		return 0, fmt.Errorf("%w: bad magic %q", ErrFrame, head[:4])
	}
	n := binary.BigEndian.Uint16(head[5:7])
	if n == 0 || n > maxFrame {
		return head[4], fmt.Errorf("%w: length %d", ErrFrame, n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return head[4], err
	}
	if err := json.Unmarshal(body, v); err != nil {
		return head[4], fmt.Errorf("%w: %v", ErrFrame, err)
	}
	return head[4], nil
}

// WriteHelloV1 sends a version 1 hello (the token in clear), as agents of
// the previous release do. This build's agent never calls it: it is for
// tests and tools that check the proxy still serves such agents.
func WriteHelloV1(w io.Writer, h Hello) error {
	h.Version = VersionLegacy
	return writeFrameV(w, VersionLegacy, h)
}

// ReadHello reads an agent's hello. The caller must bound the time it waits.
func ReadHello(r io.Reader) (Hello, error) {
	var h Hello
	_, err := readFrame(r, &h)
	if err != nil {
		return Hello{}, err
	}
	if h.SandboxID == "" || len(h.SandboxID) > 128 {
		return Hello{}, fmt.Errorf("%w: sandbox id missing or too long", ErrFrame)
	}
	if h.Version == Version {
		if err := h.validateV2(); err != nil {
			return Hello{}, err
		}
	}
	return h, nil
}

// WriteWelcome sends the proxy's answer in this build's version.
func WriteWelcome(w io.Writer, m Welcome) error { return WriteWelcomeV(w, Version, m) }

// WriteWelcomeV sends the proxy's answer in the given protocol version: a
// version 1 agent is answered in version 1.
func WriteWelcomeV(w io.Writer, version int, m Welcome) error {
	if version != VersionLegacy {
		version = Version
	}
	m.Version = version
	return writeFrameV(w, byte(version), m)
}

// ReadWelcome reads the proxy's answer; a refusal comes back as *RefusedError.
func ReadWelcome(r io.Reader) error {
	var m Welcome
	if _, err := readFrame(r, &m); err != nil {
		return err
	}
	if !m.OK {
		return &RefusedError{Code: m.Code, Msg: m.Error}
	}
	return nil
}

// TokenEqual compares secrets in constant time.
func TokenEqual(got, want string) bool {
	return subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}
