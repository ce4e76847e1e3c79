package sftpframe

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"testing"
)

func packet(typ byte, body []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(1+len(body)))
	return append(append(b, typ), body...)
}

// feed writes b to w in random chunks, as a relay's reads would cut it.
func feed(t *testing.T, w interface{ Write([]byte) (int, error) }, b []byte, r *rand.Rand) error {
	t.Helper()
	for len(b) > 0 {
		k := 1 + r.IntN(min(len(b), 9))
		n, err := w.Write(b[:k])
		if err != nil {
			return err
		}
		if n != k {
			t.Fatalf("short write %d of %d without error", n, k)
		}
		b = b[k:]
	}
	return nil
}

func TestSplitterPassesDataKeepsTrailer(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, e := range []Exit{{}, {Status: 3}, {Signal: "KILL", Core: true}} {
		var data []byte
		for i := range 20 {
			data = append(data, packet(byte(101+i%5), bytes.Repeat([]byte{byte(i)}, r.IntN(300)))...)
		}
		var out bytes.Buffer
		s := &Splitter{W: &out}
		if err := feed(t, s, AppendTrailer(bytes.Clone(data), e), r); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out.Bytes(), data) {
			t.Fatalf("the data packets changed on the way (%d bytes in, %d out)", len(data), out.Len())
		}
		got, ok := s.Exit()
		if !ok || got != e || !s.Clean() {
			t.Fatalf("trailer: got %+v ok=%v clean=%v, want %+v", got, ok, s.Clean(), e)
		}
	}
}

func TestSplitterMidPacketEndIsNotClean(t *testing.T) {
	var out bytes.Buffer
	s := &Splitter{W: &out}
	p := packet(103, make([]byte, 100))
	if _, err := s.Write(p[:50]); err != nil {
		t.Fatal(err)
	}
	if s.Clean() {
		t.Fatal("a stream cut inside a packet reads as clean")
	}
	if _, ok := s.Exit(); ok {
		t.Fatal("an exit without a trailer")
	}
}

func TestSplitterRefusesDataAfterTrailer(t *testing.T) {
	s := &Splitter{W: &bytes.Buffer{}}
	b := append(AppendTrailer(nil, Exit{}), packet(101, nil)...)
	if _, err := s.Write(b); !errors.Is(err, ErrAfterTrailer) {
		t.Fatalf("err = %v, want ErrAfterTrailer", err)
	}
}

func TestSplitterRefusesOversizedTrailer(t *testing.T) {
	s := &Splitter{W: &bytes.Buffer{}}
	b := binary.BigEndian.AppendUint32(nil, 1<<20)
	if _, err := s.Write(append(b, trailerType)); !errors.Is(err, ErrBadTrailer) {
		t.Fatalf("err = %v, want ErrBadTrailer (a trailer is small; a huge one is not held)", err)
	}
}

func TestCounterBoundaries(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	c := &Counter{W: &bytes.Buffer{}}
	if !c.AtBoundary() {
		t.Fatal("empty stream is not at a boundary")
	}
	p := packet(102, make([]byte, 1000))
	if err := feed(t, c, p[:len(p)-1], r); err != nil {
		t.Fatal(err)
	}
	if c.AtBoundary() {
		t.Fatal("one byte short of a packet reads as a boundary")
	}
	if _, err := c.Write(p[len(p)-1:]); err != nil || !c.AtBoundary() {
		t.Fatalf("a whole packet is not a boundary (err %v)", err)
	}
	if _, err := c.Write(p[:2]); err != nil || c.AtBoundary() {
		t.Fatal("half a length reads as a boundary")
	}
}

// FuzzSplitter: any bytes, cut anywhere, never panic; what passes is a
// prefix of the input and holds no trailer bytes.
func FuzzSplitter(f *testing.F) {
	f.Add(AppendTrailer(packet(101, []byte("hello")), Exit{Status: 1}), uint8(3))
	f.Add([]byte{0, 0, 0, 0}, uint8(1))
	f.Add([]byte{0, 0, 0, 11, 0, 0, 0, 0, 0, 255, 255, 255, 255, 0, 0}, uint8(2))
	f.Fuzz(func(t *testing.T, b []byte, cut uint8) {
		var out bytes.Buffer
		s := &Splitter{W: &out}
		step := int(cut%16) + 1
		for i := 0; i < len(b); i += step {
			if _, err := s.Write(b[i:min(i+step, len(b))]); err != nil {
				break
			}
		}
		if !bytes.HasPrefix(b, out.Bytes()) {
			t.Fatal("output is not a prefix of the input")
		}
		_ = s.Clean()
	})
}
