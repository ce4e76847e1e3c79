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

// Version is the protocol version this build speaks. A peer with another
// version is refused during the handshake with CodeBadVersion.
const Version = 1

// magic opens every handshake frame so that a stray client (an HTTP probe, a
// port scanner) is told apart from an agent at the first bytes.
var magic = [4]byte{'T', 'L', 'U', 'P'}

// maxFrame bounds handshake and header frames: they carry ids and tokens,
// never payload, so anything larger is a protocol error.
const maxFrame = 4096

// Hello is the agent's first frame.
type Hello struct {
	Version      int    `json:"version"`
	SandboxID    string `json:"sandbox_id"`
	Token        string `json:"token"`
	AgentVersion string `json:"agent_version,omitempty"`
}

// Welcome is the proxy's answer to Hello. OK false carries a refusal that
// the agent logs before backing off.
type Welcome struct {
	OK      bool   `json:"ok"`
	Code    string `json:"code,omitempty"`
	Error   string `json:"error,omitempty"`
	Version int    `json:"version"`
}

// Refusal codes sent in Welcome.Code.
const (
	CodeBadVersion   = "BAD_VERSION"
	CodeBadToken     = "BAD_TOKEN"
	CodeUnknown      = "UNKNOWN_SANDBOX"
	CodeDuplicate    = "DUPLICATE_SANDBOX"
	CodeBadHandshake = "BAD_HANDSHAKE"
)

// ErrFrame reports a malformed frame: wrong magic, bad length or bad JSON.
var ErrFrame = errors.New("uplink: malformed frame")

// RefusedError is returned by the agent side when the proxy refuses it.
type RefusedError struct{ Code, Msg string }

func (e *RefusedError) Error() string {
	return fmt.Sprintf("uplink refused: %s: %s", e.Code, e.Msg)
}

// writeFrame writes magic, version byte, u16 length and the JSON body.
func writeFrame(w io.Writer, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(body) > maxFrame {
		return fmt.Errorf("%w: frame of %d bytes exceeds %d", ErrFrame, len(body), maxFrame)
	}
	buf := make([]byte, 0, 7+len(body))
	buf = append(buf, magic[:]...)
	buf = append(buf, Version)
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

// WriteHello sends the agent's hello.
func WriteHello(w io.Writer, h Hello) error {
	h.Version = Version
	return writeFrame(w, h)
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
	return h, nil
}

// WriteWelcome sends the proxy's answer.
func WriteWelcome(w io.Writer, m Welcome) error {
	m.Version = Version
	return writeFrame(w, m)
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
