package pty

import (
	"bytes"
	"testing"
)

// model is the obvious implementation the ring must agree with.
type model struct {
	all []byte
	max int
}

func (m *model) kept() []byte {
	if len(m.all) > m.max {
		return m.all[len(m.all)-m.max:]
	}
	return m.all
}

func readAll(r *ring, from int64) []byte {
	var out []byte
	buf := make([]byte, 7) // small: exercises wrap-around in read
	for off := from; off < r.end; {
		n := r.read(off, buf)
		if n == 0 {
			break
		}
		out = append(out, buf[:n]...)
		off += int64(n)
	}
	return out
}

func TestRingMatchesModel(t *testing.T) {
	for _, max := range []int{1, 5, minRing, 3*minRing + 7} {
		r := newRing(max)
		m := &model{max: max}
		seed := byte(1)
		for step := 0; step < 300; step++ {
			n := (step*37 + 11) % (2*max + 3)
			p := make([]byte, n)
			for i := range p {
				seed = seed*31 + 7
				p[i] = seed
			}
			r.write(p)
			m.all = append(m.all, p...)
			if r.end != int64(len(m.all)) {
				t.Fatalf("max %d step %d: end %d, want %d", max, step, r.end, len(m.all))
			}
			if got := readAll(&r, r.start); !bytes.Equal(got, m.kept()) {
				t.Fatalf("max %d step %d: kept %d bytes differ from model's %d", max, step, len(got), len(m.kept()))
			}
			if r.Cap() > max {
				t.Fatalf("max %d: grew to %d", max, r.Cap())
			}
		}
	}
}

func TestRingGrowsLazily(t *testing.T) {
	r := newRing(1 << 20)
	if r.Cap() != 0 {
		t.Fatalf("new ring holds %d bytes", r.Cap())
	}
	r.write([]byte("$ "))
	if r.Cap() != minRing {
		t.Fatalf("after a prompt the ring holds %d bytes, want %d", r.Cap(), minRing)
	}
	r.write(make([]byte, 100<<10))
	if r.Cap() > 256<<10 {
		t.Fatalf("after 100 KiB the ring holds %d bytes", r.Cap())
	}
}

func TestReadOutsideKept(t *testing.T) {
	r := newRing(8)
	r.write([]byte("0123456789"))
	buf := make([]byte, 4)
	if n := r.read(0, buf); n != 0 {
		t.Fatalf("read of an evicted offset returned %d bytes", n)
	}
	if n := r.read(r.end, buf); n != 0 {
		t.Fatalf("read at end returned %d bytes", n)
	}
	if n := r.read(2, buf); n != 4 || string(buf) != "2345" {
		t.Fatalf("read(2) = %d %q", n, buf[:n])
	}
}

func TestReplayStart(t *testing.T) {
	cases := []struct {
		name  string
		max   int
		write string
		want  string
	}{
		{"nothing dropped", 64, "\x1b[31mred\x1b[0m\n", "\x1b[31mred\x1b[0m\n"},
		{"cut after a line feed", 10, "aaaa\x1b[31mbb\ncc", "cc"},
		{"cut inside UTF-8, no line feed", 4, "aé€é", "é"}, // kept: 82 ac c3 a9
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newRing(c.max)
			r.write([]byte(c.write))
			got := string(readAll(&r, r.replayStart()))
			kept := string(readAll(&r, r.start))
			if got != c.want {
				t.Fatalf("replay %q, want %q (kept %q)", got, c.want, kept)
			}
		})
	}
}

// TestRestoredRing: a ring rebuilt from a hand-over keeps the absolute
// offsets; output over this build's size keeps its newest part.
func TestRestoredRing(t *testing.T) {
	data := []byte("0123456789abcdefghij")
	r := restoredRing(64, 1000, data)
	got := make([]byte, r.Len())
	r.read(r.start, got)
	if r.start != 1000 || r.end != 1020 || string(got) != string(data) {
		t.Fatalf("restored [%d, %d) %q", r.start, r.end, got)
	}
	r.write([]byte("XY"))
	if r.end != 1022 || r.at(1020) != 'X' {
		t.Fatalf("write after restore: end %d", r.end)
	}
	small := restoredRing(8, 1000, data)
	got = make([]byte, small.Len())
	small.read(small.start, got)
	if small.start != 1012 || small.end != 1020 || string(got) != "cdefghij" {
		t.Fatalf("over max: [%d, %d) %q, want the newest 8 bytes at the same offsets", small.start, small.end, got)
	}
	if empty := restoredRing(8, 77, nil); empty.start != 77 || empty.end != 77 || empty.replayStart() != 77 {
		t.Fatalf("empty restored ring [%d, %d)", empty.start, empty.end)
	}
}
