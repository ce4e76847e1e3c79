package uplink

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/tensorlake/tl-agent/internal/reqid"
)

// Kinds of stream targets.
const (
	KindAPI  = "api"  // the agent's HTTP API (one HTTP/1.1 connection)
	KindSSH  = "ssh"  // the agent's SSH server (one SSH connection)
	KindSFTP = "sftp" // a bare SFTP session as the sandbox user (the SSH front door's sftp subsystem)
	KindTCP  = "tcp"  // a TCP port on 127.0.0.1 inside the sandbox
	KindUnix = "unix" // a unix socket inside the sandbox
	// KindMetrics asks for the agent's metrics: the agent replies OK,
	// writes them in Prometheus text format and closes. Only the proxy's
	// operator door opens it; no user route names it.
	KindMetrics = "metrics"
	// KindLifecycle carries one platform call (prepare, resume, status;
	// docs/lifecycle.md): the agent replies OK, reads one JSON request,
	// answers one JSON response and closes. Only the proxy's operator door
	// opens it; no user route names it.
	KindLifecycle = "lifecycle"
	// KindBye is the one stream the agent opens: at an orderly shutdown it
	// says goodbye, so the proxy knows the sandbox left (a reboot may then
	// use the base token at once). The agent never accepts it.
	KindBye = "bye"
)

// Header is the first thing the proxy writes on every stream it opens.
type Header struct {
	// Kind is one of the Kind constants.
	Kind string `json:"kind"`
	// Port is the target port for KindTCP.
	Port int `json:"port,omitempty"`
	// Path is the socket path for KindUnix.
	Path string `json:"path,omitempty"`
	// User is who the proxy authenticated (an SSH key's comment), for the
	// agent's logs only: the uplink is trusted. Only streams that serve one
	// user's connection (ssh, sftp) carry it; api and tcp streams are
	// pooled across users and carry none (the proxy logs each request).
	User string `json:"user,omitempty"`
	// Remote is the user's address as the proxy saw it, for logs.
	Remote string `json:"remote,omitempty"`
	// ExitTrailer (KindSFTP): the proxy wants the sftp-server's exit in a
	// trailer after its last packet (internal/sftpframe). An agent that
	// predates it ignores the field and sends none.
	ExitTrailer bool `json:"exit_trailer,omitempty"`
	// RequestID and TraceID name the one user connection a stream serves
	// (ssh, sftp, and tcp or unix from the SSH front door), for the
	// agent's logs only (internal/reqid). Pooled api and tcp streams of
	// the HTTP front door carry none: each request's ids travel in its
	// own HTTP headers. Optional: an agent that predates them ignores
	// them (unknown JSON fields are skipped).
	RequestID string `json:"request_id,omitempty"`
	TraceID   string `json:"trace_id,omitempty"`
}

// String is the short target form used in logs: api, ssh, tcp:8080, unix:/p.
func (h Header) String() string {
	switch h.Kind {
	case KindTCP:
		return "tcp:" + strconv.Itoa(h.Port)
	case KindUnix:
		return "unix:" + h.Path
	}
	return h.Kind
}

// ParseTarget turns the short form (api, ssh, tcp:PORT, unix:PATH) into a
// Header. It is what operators and tests type.
func ParseTarget(s string) (Header, error) {
	kind, arg, _ := strings.Cut(s, ":")
	h := Header{Kind: kind}
	switch kind {
	case KindTCP:
		p, err := strconv.Atoi(arg)
		if err != nil {
			return Header{}, fmt.Errorf("target %q: bad port", s)
		}
		h.Port = p
	case KindUnix:
		h.Path = arg
	}
	return h, h.Validate()
}

// Validate checks a header as received; the agent calls it before acting.
func (h Header) Validate() error {
	if h.RequestID != "" && !reqid.ValidRequestID(h.RequestID) {
		return fmt.Errorf("request_id: want 1 to %d printable ASCII bytes without spaces", reqid.MaxRequestID)
	}
	if h.TraceID != "" && !reqid.ValidTraceID(h.TraceID) {
		return fmt.Errorf("trace_id: want 32 lower-case hex digits, not all zero")
	}
	switch h.Kind {
	case KindAPI, KindSSH, KindSFTP, KindMetrics, KindLifecycle:
		return nil
	case KindTCP:
		if h.Port < 1 || h.Port > 65535 {
			return fmt.Errorf("tcp target: port %d out of range 1..65535", h.Port)
		}
		return nil
	case KindUnix:
		if !strings.HasPrefix(h.Path, "/") || strings.IndexByte(h.Path, 0) >= 0 || len(h.Path) > 107 {
			return fmt.Errorf("unix target: path must be absolute and at most 107 bytes")
		}
		return nil
	case "":
		return fmt.Errorf("missing target kind")
	}
	return fmt.Errorf("unknown target kind %q", h.Kind)
}

// WriteHeader writes h as u16 length + JSON.
func WriteHeader(w io.Writer, h Header) error {
	body, err := json.Marshal(h)
	if err != nil {
		return err
	}
	if len(body) > maxFrame {
		return fmt.Errorf("%w: header of %d bytes", ErrFrame, len(body))
	}
	buf := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(body)), uint16(len(body)))
	_, err = w.Write(append(buf, body...))
	return err
}

// ReadHeader reads a header written by WriteHeader. It does not validate the
// target: the agent answers an invalid one with a Reply carrying the reason.
func ReadHeader(r io.Reader) (Header, error) {
	var n [2]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return Header{}, err
	}
	size := binary.BigEndian.Uint16(n[:])
	if size == 0 || size > maxFrame {
		return Header{}, fmt.Errorf("%w: header length %d", ErrFrame, size)
	}
	body := make([]byte, size)
	if _, err := io.ReadFull(r, body); err != nil {
		return Header{}, err
	}
	var h Header
	if err := json.Unmarshal(body, &h); err != nil {
		return Header{}, fmt.Errorf("%w: %v", ErrFrame, err)
	}
	return h, nil
}

// Reply status bytes.
const (
	StatusOK          byte = 0
	StatusBadHeader   byte = 1 // malformed or unknown target
	StatusUnreachable byte = 2 // the target refused or did not answer
	StatusUnavailable byte = 3 // the agent is shutting down or at a limit
)

// ReplyError is how the proxy sees a non-OK reply.
type ReplyError struct {
	Status byte
	Msg    string
}

func (e *ReplyError) Error() string { return "agent: " + e.Msg }

// WriteReply answers a header: status byte, u16 length, message.
func WriteReply(w io.Writer, status byte, msg string) error {
	if len(msg) > maxFrame {
		msg = msg[:maxFrame]
	}
	buf := make([]byte, 0, 3+len(msg))
	buf = append(buf, status)
	buf = binary.BigEndian.AppendUint16(buf, uint16(len(msg)))
	_, err := w.Write(append(buf, msg...))
	return err
}

// ReadReply reads the agent's answer; a non-OK status is a *ReplyError.
func ReadReply(r io.Reader) error {
	var head [3]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return err
	}
	n := binary.BigEndian.Uint16(head[1:])
	if n > maxFrame {
		return fmt.Errorf("%w: reply length %d", ErrFrame, n)
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(r, msg); err != nil {
		return err
	}
	if head[0] != StatusOK {
		return &ReplyError{Status: head[0], Msg: string(msg)}
	}
	return nil
}
