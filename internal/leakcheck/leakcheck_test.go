package leakcheck

import (
	"os"
	"strings"
	"testing"
	"time"
)

// fakeTB records a failure instead of ending the test.
type fakeTB struct {
	testing.TB
	msg string
}

func (f *fakeTB) Helper()                           {}
func (f *fakeTB) Fatalf(format string, args ...any) { f.msg = format }

// The check catches a goroutine and an fd left behind, and passes once
// they are gone.
func TestCheckCatchesLeaks(t *testing.T) {
	base := Take(t)
	base.wait = 100 * time.Millisecond
	stop := make(chan struct{})
	go func() { <-stop }()
	f, err := os.Open("/dev/null")
	if err != nil {
		t.Fatal(err)
	}
	tb := &fakeTB{TB: t}
	base.Check(tb)
	if !strings.HasPrefix(tb.msg, "leak:") {
		t.Fatal("a goroutine and an fd left behind passed the check")
	}
	if got := Running("leakcheck.TestCheckCatchesLeaks"); len(got) != 1 {
		t.Errorf("Running found %d goroutines of this test, want 1", len(got))
	}
	close(stop)
	f.Close()
	base.Check(t)
}
