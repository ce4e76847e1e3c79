package pty

import (
	"errors"
	"testing"
)

func TestParseClientFrame(t *testing.T) {
	cases := []struct {
		name       string
		in         []byte
		op         byte
		data       string
		cols, rows int
		err        error
	}{
		{"input", []byte("\x00ls\r"), opData, "ls\r", 0, 0, nil},
		{"empty input", []byte{0}, opData, "", 0, 0, nil},
		{"resize", []byte{1, 0, 120, 0, 40}, opResize, "", 120, 40, nil},
		{"resize with trailing bytes", []byte{1, 1, 0, 0, 2, 9}, opResize, "", 256, 2, nil},
		{"resize big values", []byte{1, 0xff, 0xff, 0xff, 0xff}, opResize, "", 65535, 65535, nil},
		{"ready", []byte{2}, opReady, "", 0, 0, nil},
		{"truncated resize", []byte{1, 0, 80, 0}, 0, "", 0, 0, errShortResize},
		{"opcode only resize", []byte{1}, 0, "", 0, 0, errShortResize},
		{"exit from client", []byte{3, 0, 0, 0, 0}, 0, "", 0, 0, errUnknownOp},
		{"unknown", []byte{0x7f}, 0, "", 0, 0, errUnknownOp},
		{"empty", nil, 0, "", 0, 0, errEmptyFrame},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, err := parseClientFrame(c.in)
			if !errors.Is(err, c.err) {
				t.Fatalf("err %v, want %v", err, c.err)
			}
			if err != nil {
				return
			}
			if f.op != c.op || string(f.data) != c.data || f.cols != c.cols || f.rows != c.rows {
				t.Fatalf("got %+v", f)
			}
		})
	}
}

func TestClampSize(t *testing.T) {
	for _, c := range []struct{ rows, cols, wr, wc int }{
		{24, 80, 24, 80}, {0, 0, 1, 1}, {-5, 2000, 1, 1000}, {501, 1000, 500, 1000}, {65535, 65535, 500, 1000},
	} {
		r, co := clampSize(c.rows, c.cols)
		if int(r) != c.wr || int(co) != c.wc {
			t.Errorf("clamp(%d,%d) = %d,%d want %d,%d", c.rows, c.cols, r, co, c.wr, c.wc)
		}
	}
}

func TestExitFrame(t *testing.T) {
	if got := exitFrame(-1); string(got) != "\x03\xff\xff\xff\xff" {
		t.Fatalf("exitFrame(-1) = %x", got)
	}
	if got := exitFrame(130); string(got) != "\x03\x00\x00\x00\x82" {
		t.Fatalf("exitFrame(130) = %x", got)
	}
}

func FuzzParseClientFrame(f *testing.F) {
	for _, s := range [][]byte{{0, 'a'}, {1, 0, 80, 0, 24}, {2}, {1, 0}, {9}, {}} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := parseClientFrame(b)
		if err != nil {
			return
		}
		if fr.op != b[0] {
			t.Fatalf("op %x from %x", fr.op, b)
		}
		switch fr.op {
		case opData:
			if len(fr.data) != len(b)-1 {
				t.Fatalf("data length %d from %d bytes", len(fr.data), len(b))
			}
		case opResize:
			if len(b) < 5 || fr.cols > 65535 || fr.rows > 65535 {
				t.Fatalf("resize %+v from %x", fr, b)
			}
			r, c := clampSize(fr.rows, fr.cols)
			if r < 1 || r > maxRows || c < 1 || c > maxCols {
				t.Fatalf("clamped %d,%d", r, c)
			}
		case opReady:
		default:
			t.Fatalf("accepted opcode %x", fr.op)
		}
	})
}
