package activity

import (
	"testing"
	"time"
)

func TestRecorder(t *testing.T) {
	var r Recorder
	if !r.Last().IsZero() {
		t.Fatalf("fresh recorder: last %v, want zero", r.Last())
	}
	r.Touch()
	first := r.Last()
	if first.IsZero() {
		t.Fatal("touch recorded nothing")
	}
	end := r.Hold()
	if r.Active() != 1 {
		t.Fatalf("active %d, want 1", r.Active())
	}
	time.Sleep(2 * time.Millisecond)
	if !r.Last().After(first) {
		t.Fatal("a held span is not activity now")
	}
	end()
	end() // twice is once
	if r.Active() != 0 {
		t.Fatalf("active %d after the end, want 0", r.Active())
	}
	ended := r.Last()
	time.Sleep(2 * time.Millisecond)
	if !r.Last().Equal(ended) {
		t.Fatal("last activity moves after every span ended")
	}
	var nilRec *Recorder
	nilRec.Touch()
	nilRec.Hold()()
	if !nilRec.Last().IsZero() {
		t.Fatal("nil recorder recorded")
	}
}
