package integration

import (
	"encoding/binary"
	"io"
	"net"
	"testing"
)

// fakeRFB serves a minimal RFB 3.8 server (security None, a 4x2 screen of
// one colour, raw encoding) on loopback for the SDK's connectDesktop, and
// returns its port. Like VNC, it speaks first: the greeting goes out on
// accept.
func fakeRFB(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = serveRFB(c)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

func serveRFB(c net.Conn) error {
	const w, h = 4, 2
	buf := make([]byte, 64)
	step := func(send []byte, read int) error {
		if _, err := c.Write(send); err != nil {
			return err
		}
		_, err := io.ReadFull(c, buf[:read])
		return err
	}
	// Version; security types [None]; result OK + ClientInit (shared flag).
	if err := step([]byte("RFB 003.008\n"), 12); err != nil {
		return err
	}
	if err := step([]byte{1, 1}, 1); err != nil {
		return err
	}
	init := []byte{0, 0, 0, 0}
	if err := step(init, 1); err != nil {
		return err
	}
	// ServerInit: size, pixel format (32 bpp, depth 24, true colour,
	// 8 bits a channel), name.
	si := binary.BigEndian.AppendUint16(nil, w)
	si = binary.BigEndian.AppendUint16(si, h)
	si = append(si, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0)
	si = binary.BigEndian.AppendUint32(si, 3)
	si = append(si, "rfb"...)
	if _, err := c.Write(si); err != nil {
		return err
	}
	bpp := 4
	for {
		if _, err := io.ReadFull(c, buf[:1]); err != nil {
			return err
		}
		switch buf[0] {
		case 0: // SetPixelFormat
			if _, err := io.ReadFull(c, buf[:19]); err != nil {
				return err
			}
			bpp = int(buf[3]) / 8
		case 2: // SetEncodings
			if _, err := io.ReadFull(c, buf[:3]); err != nil {
				return err
			}
			if _, err := io.CopyN(io.Discard, c, int64(binary.BigEndian.Uint16(buf[1:3]))*4); err != nil {
				return err
			}
		case 3: // FramebufferUpdateRequest: the full one is answered
			if _, err := io.ReadFull(c, buf[:9]); err != nil {
				return err
			}
			if buf[0] != 0 {
				continue
			}
			up := []byte{0, 0, 0, 1, 0, 0, 0, 0, 0, w, 0, h, 0, 0, 0, 0}
			px := make([]byte, w*h*bpp)
			for i := range px {
				px[i] = 0x80
			}
			if _, err := c.Write(append(up, px...)); err != nil {
				return err
			}
		case 4: // KeyEvent
			_, err := io.ReadFull(c, buf[:7])
			if err != nil {
				return err
			}
		case 5: // PointerEvent
			if _, err := io.ReadFull(c, buf[:5]); err != nil {
				return err
			}
		default:
			return nil
		}
	}
}
