package copybuf

import "testing"

// At most MaxBig big buffers are out at once; past that a copy gets a
// small one, and a big one given back is lent again.
func TestBigBuffersBounded(t *testing.T) {
	var lent [][]byte
	for i := 0; i < MaxBig; i++ {
		b := Get()
		if len(b) != Size {
			t.Fatalf("buffer %d: %d bytes, want %d", i, len(b), Size)
		}
		lent = append(lent, b)
	}
	s := Pool{}.Get()
	if len(s) != SmallSize {
		t.Fatalf("past the bound: %d bytes, want %d", len(s), SmallSize)
	}
	Pool{}.Put(s)
	Put(lent[0])
	if lent[0] = Get(); len(lent[0]) != Size {
		t.Fatalf("after one came back: %d bytes, want %d", len(lent[0]), Size)
	}
	for _, b := range lent {
		Put(b)
	}
	if n := BigOut(); n != 0 {
		t.Fatalf("%d big buffers counted out after all came back", n)
	}
	Put(make([]byte, 1000)) // not lent: ignored
	if n := BigOut(); n != 0 {
		t.Fatalf("a foreign buffer changed the count: %d", n)
	}
}
