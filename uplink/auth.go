package uplink

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
)

// Protocol version 2: mutual challenge-response, no secret on the wire.
//
//	agent → proxy  Hello     {version 2, sandbox_id, nonce Na, key, key_id}
//	proxy → agent  Challenge {nonce Np, proof P}  (or a refusal)
//	agent → proxy  Proof     {proof A, agent_version}  (or code BAD_PROOF)
//	proxy → agent  Welcome   {ok} (or a refusal)
//
// K is the base token (key "token") or a link secret (key "link"). Each
// proof is an HMAC-SHA256 keyed by K over a direction label, the sandbox id
// and both nonces, so a proof made for one direction cannot be reflected as
// the other, and none can be replayed on another handshake. The proxy
// proves first: the agent (whether it dialed or was dialed, as in listen
// mode) proves nothing and reveals nothing but its id until its peer has
// shown it knows K. After the welcome both ends derive the next link
// secret from K and the nonces; it never crosses the wire. docs/uplink.md
// has the whole design.

// Key kinds in Hello.Key.
const (
	KeyToken = "token"
	KeyLink  = "link"
)

// NonceSize and ProofSize are in bytes; both travel hex-encoded.
const (
	NonceSize = 32
	ProofSize = sha256.Size
)

const (
	labelProxy = "tl-uplink/2 proxy proof"
	labelAgent = "tl-uplink/2 agent proof"
	labelLink  = "tl-uplink/2 link secret"
	labelKeyID = "tl-uplink/2 key id"
)

// Challenge is the proxy's answer to a v2 hello: its nonce and its proof,
// or a refusal (Code set).
type Challenge struct {
	Nonce string `json:"nonce,omitempty"`
	Proof string `json:"proof,omitempty"`
	Code  string `json:"code,omitempty"`
	Error string `json:"error,omitempty"`
}

// Proof is the agent's answer to a challenge, or its refusal of the
// proxy's proof (Code CodeBadProof).
type Proof struct {
	Proof        string `json:"proof,omitempty"`
	AgentVersion string `json:"agent_version,omitempty"`
	Code         string `json:"code,omitempty"`
}

// NewNonce returns NonceSize random bytes.
func NewNonce() []byte {
	b := make([]byte, NonceSize)
	if _, err := rand.Read(b); err != nil {
		panic("uplink: no randomness: " + err.Error()) // crypto/rand does not fail on Linux
	}
	return b
}

func mac(key []byte, label, id string, na, np []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(label))
	m.Write([]byte{0})
	m.Write([]byte(id))
	m.Write([]byte{0})
	m.Write(na)
	m.Write(np)
	return m.Sum(nil)
}

// ProxyProof, AgentProof and NextSecret are the three MACs of a handshake.
func ProxyProof(key []byte, id string, na, np []byte) []byte { return mac(key, labelProxy, id, na, np) }
func AgentProof(key []byte, id string, na, np []byte) []byte { return mac(key, labelAgent, id, na, np) }
func NextSecret(key []byte, id string, na, np []byte) []byte { return mac(key, labelLink, id, na, np) }

// KeyID names a link secret without revealing it: the first 8 bytes of an
// HMAC under it, hex.
func KeyID(secret []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(labelKeyID))
	return hex.EncodeToString(m.Sum(nil)[:8])
}

// MACEqual compares MACs in constant time.
func MACEqual(a, b []byte) bool { return hmac.Equal(a, b) }

func decodeHex(s string, n int, what string) ([]byte, error) {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != n {
		return nil, fmt.Errorf("%w: %s must be %d hex-encoded bytes", ErrFrame, what, n)
	}
	return b, nil
}

func (h Hello) validateV2() error {
	if _, err := decodeHex(h.Nonce, NonceSize, "nonce"); err != nil {
		return err
	}
	switch h.Key {
	case KeyToken:
		if h.KeyID != "" || h.Token != "" {
			return fmt.Errorf("%w: key_id or token with key %q", ErrFrame, h.Key)
		}
	case KeyLink:
		if _, err := decodeHex(h.KeyID, 8, "key_id"); err != nil {
			return err
		}
		if h.Token != "" {
			return fmt.Errorf("%w: token in a v2 hello", ErrFrame)
		}
	default:
		return fmt.Errorf("%w: key must be %q or %q", ErrFrame, KeyToken, KeyLink)
	}
	return nil
}

// AgentAuth is what the agent proves with.
type AgentAuth struct {
	SandboxID    string
	Key          []byte // the base token, or a link secret
	Link         bool   // Key is a link secret
	AgentVersion string
}

// ErrPeerProof is wrapped by the agent's refusal when the peer's proof is
// wrong: a peer that does not know the key (not our proxy), a wrong token,
// or (with a link secret) a proxy that no longer holds it.
var ErrPeerProof = fmt.Errorf("uplink: the peer did not prove it knows the key")

// AgentHandshake runs version 2 as the agent on rw; the caller bounds the
// time. On success it returns the next link secret. When the connection
// fails after the agent has proved itself, next is still returned: the
// proxy may have adopted it before the welcome was lost.
func AgentHandshake(rw io.ReadWriter, a AgentAuth) (next []byte, err error) {
	na := NewNonce()
	h := Hello{Version: Version, SandboxID: a.SandboxID, Nonce: hex.EncodeToString(na), Key: KeyToken}
	if a.Link {
		h.Key, h.KeyID = KeyLink, KeyID(a.Key)
	}
	if err := writeFrame(rw, h); err != nil {
		return nil, fmt.Errorf("send hello: %w", err)
	}
	var ch Challenge
	if _, err := readFrame(rw, &ch); err != nil {
		return nil, fmt.Errorf("read challenge: %w", err)
	}
	if ch.Code != "" {
		return nil, &RefusedError{Code: ch.Code, Msg: ch.Error}
	}
	np, err1 := decodeHex(ch.Nonce, NonceSize, "nonce")
	pp, err2 := decodeHex(ch.Proof, ProofSize, "proof")
	if err1 != nil || err2 != nil || !MACEqual(pp, ProxyProof(a.Key, a.SandboxID, na, np)) {
		_ = writeFrame(rw, Proof{Code: CodeBadProof})
		// Logged as the proxy's refusals are: from here a wrong token and
		// a stranger look the same, and both are worth a back-off.
		return nil, &RefusedError{Code: CodeBadToken, Msg: "the peer did not prove it knows this sandbox's secret (wrong token, or not our proxy)", Err: ErrPeerProof}
	}
	p := Proof{Proof: hex.EncodeToString(AgentProof(a.Key, a.SandboxID, na, np)), AgentVersion: a.AgentVersion}
	if err := writeFrame(rw, p); err != nil {
		return nil, fmt.Errorf("send proof: %w", err)
	}
	next = NextSecret(a.Key, a.SandboxID, na, np)
	if err := ReadWelcome(rw); err != nil {
		return next, err
	}
	return next, nil
}

// ProxyChallenge runs version 2 as the proxy after ReadHello returned a v2
// hello h, proving knowledge of key and checking the agent's proof. It
// returns the agent's version and the next link secret; on a wrong proof
// it has already sent the refusal (CodeBadToken) and returns a
// *RefusedError. The caller sends the welcome.
func ProxyChallenge(rw io.ReadWriter, h Hello, key []byte) (agentVersion string, next []byte, err error) {
	na, err := decodeHex(h.Nonce, NonceSize, "nonce")
	if err != nil {
		return "", nil, err
	}
	np := NewNonce()
	ch := Challenge{Nonce: hex.EncodeToString(np), Proof: hex.EncodeToString(ProxyProof(key, h.SandboxID, na, np))}
	if err := writeFrame(rw, ch); err != nil {
		return "", nil, err
	}
	var p Proof
	if _, err := readFrame(rw, &p); err != nil {
		return "", nil, err
	}
	if p.Code != "" {
		return "", nil, &RefusedError{Code: p.Code, Msg: "the agent refused the proxy's proof"}
	}
	ap, err := decodeHex(p.Proof, ProofSize, "proof")
	if err != nil || !MACEqual(ap, AgentProof(key, h.SandboxID, na, np)) {
		refusal := &RefusedError{Code: CodeBadToken, Msg: BadCredentials}
		_ = WriteWelcome(rw, Welcome{Code: refusal.Code, Error: refusal.Msg})
		return "", nil, refusal
	}
	if len(p.AgentVersion) > 128 {
		p.AgentVersion = p.AgentVersion[:128]
	}
	return p.AgentVersion, NextSecret(key, h.SandboxID, na, np), nil
}

// BadCredentials is the one message for an unknown sandbox id and a wrong
// secret alike.
const BadCredentials = "unknown sandbox or wrong secret"

// RefuseChallenge answers a v2 hello with a refusal instead of a challenge.
func RefuseChallenge(w io.Writer, code, msg string) error {
	return writeFrame(w, Challenge{Code: code, Error: msg})
}
