package pty

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// WebSocket opcodes: the first byte of every binary message (the spec's
// PTY section).
const (
	opData   byte = 0x00 // both ways: terminal bytes
	opResize byte = 0x01 // client: cols u16 BE, rows u16 BE
	opReady  byte = 0x02 // client: send the kept output, then go live
	opExit   byte = 0x03 // agent: exit code i32 BE
)

// Errors of client frames; each closes the WebSocket with a clear reason.
var (
	errEmptyFrame   = errors.New("empty frame")
	errShortResize  = errors.New("truncated resize frame: want 01 + cols u16 + rows u16")
	errUnknownOp    = errors.New("unknown opcode")
	errTextMessages = errors.New("text messages are not supported: send binary frames")
)

// clientFrame is one parsed client message. data aliases the message.
type clientFrame struct {
	op         byte
	data       []byte // opData
	cols, rows int    // opResize, not yet clamped
}

// parseClientFrame parses a binary client message.
func parseClientFrame(b []byte) (clientFrame, error) {
	if len(b) == 0 {
		return clientFrame{}, errEmptyFrame
	}
	f := clientFrame{op: b[0]}
	switch f.op {
	case opData:
		f.data = b[1:]
	case opResize:
		if len(b) < 5 {
			return clientFrame{}, errShortResize
		}
		f.cols = int(binary.BigEndian.Uint16(b[1:3]))
		f.rows = int(binary.BigEndian.Uint16(b[3:5]))
	case opReady:
	default:
		return clientFrame{}, fmt.Errorf("%w 0x%02x", errUnknownOp, f.op)
	}
	return f, nil
}

// exitFrame is the agent's 03 frame.
func exitFrame(code int) []byte {
	b := make([]byte, 5)
	b[0] = opExit
	binary.BigEndian.PutUint32(b[1:], uint32(int32(code)))
	return b
}

// Terminal size limits of the spec: rows 1..500, cols 1..1000.
const (
	maxRows = 500
	maxCols = 1000
)

func clampSize(rows, cols int) (uint16, uint16) {
	return uint16(min(max(rows, 1), maxRows)), uint16(min(max(cols, 1), maxCols))
}
