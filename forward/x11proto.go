package forward

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The X11 connection setup, the one X11 message the agent reads: an X
// client's first packet names its authorization protocol and data (the
// cookie), which the display swaps from the fake cookie the sandbox holds
// to the one the SSH client sent (X Window System Protocol, "Connection
// Setup"). Layout: byte order ('B' MSB first, 'l' LSB first), unused,
// major and minor version (CARD16), name length n and data length d
// (CARD16), unused CARD16, then the name and the data, each padded to 4.

const x11SetupHeader = 12

// x11Setup is a parsed connection setup.
type x11Setup struct {
	order        binary.ByteOrder
	head         [x11SetupHeader]byte
	name, cookie []byte
}

var errX11Order = errors.New("not an X11 connection setup (bad byte order)")

func pad4(n int) int { return (4 - n%4) % 4 }

// readX11Setup reads the connection setup. Its lengths are CARD16s, so it
// holds at most 2 x 64 KiB.
func readX11Setup(r io.Reader) (*x11Setup, error) {
	s := &x11Setup{}
	if _, err := io.ReadFull(r, s.head[:]); err != nil {
		return nil, fmt.Errorf("X11 setup: %w", err)
	}
	switch s.head[0] {
	case 'B':
		s.order = binary.BigEndian
	case 'l':
		s.order = binary.LittleEndian
	default:
		return nil, errX11Order
	}
	n, d := int(s.order.Uint16(s.head[6:])), int(s.order.Uint16(s.head[8:]))
	body := make([]byte, n+pad4(n)+d+pad4(d))
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, fmt.Errorf("X11 setup: %w", err)
	}
	s.name = body[:n]
	s.cookie = body[n+pad4(n) : n+pad4(n)+d]
	return s, nil
}

// withCookie is the setup packet carrying cookie instead of the client's.
func (s *x11Setup) withCookie(cookie []byte) []byte {
	head := s.head
	s.order.PutUint16(head[8:], uint16(len(cookie)))
	out := make([]byte, 0, x11SetupHeader+len(s.name)+pad4(len(s.name))+len(cookie)+pad4(len(cookie)))
	out = append(out, head[:]...)
	out = append(out, s.name...)
	out = append(out, make([]byte, pad4(len(s.name)))...)
	out = append(out, cookie...)
	return append(out, make([]byte, pad4(len(cookie)))...)
}

// x11Failed is the server's "Failed" answer to a setup, which Xlib prints
// as `connection to ":10.0" refused by server` followed by reason: byte 0,
// the reason's length, protocol 11.0, the padded reason's length in
// 4-byte units, the reason.
func x11Failed(order binary.ByteOrder, reason string) []byte {
	if len(reason) > 255 {
		reason = reason[:255]
	}
	p := pad4(len(reason))
	out := make([]byte, 8, 8+len(reason)+p)
	out[1] = byte(len(reason))
	order.PutUint16(out[2:], 11)
	order.PutUint16(out[6:], uint16((len(reason)+p)/4))
	out = append(out, reason...)
	return append(out, make([]byte, p)...)
}
