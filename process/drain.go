package process

import (
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// drainAfterExit waits, after the leader's exit, until the capture
// goroutines are done (drained closes). What was in a pipe at the exit is
// always read, however long that takes: a run client applying
// back-pressure sets the pace, and the stall timeout bounds it. After
// that, a pipe that a descendant still holds open is read for at most
// grace from the exit, then its reads are cut.
//
// Each capturer counts the bytes it took from its pipe. The target is taken as the
// pipe's unread bytes before the count, so it may count a few bytes twice,
// never miss one; an empty pipe means everything written was taken.
func drainAfterExit(caps []*capturer, drained <-chan struct{}, grace time.Duration) {
	targets := make([]int64, len(caps))
	for i, c := range caps {
		targets[i] = pipeBytes(c.f) + c.got.Load()
	}
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-drained:
		return
	case <-timer.C:
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !caughtUp(caps, targets) {
		select {
		case <-drained:
			return
		case <-tick.C:
		}
	}
	for _, c := range caps {
		c.endReads()
	}
	<-drained
}

// caughtUp reports whether every pipe's pre-exit bytes have been taken.
func caughtUp(caps []*capturer, targets []int64) bool {
	for i, c := range caps {
		if c.got.Load() < targets[i] && pipeBytes(c.f) > 0 {
			return false
		}
	}
	return true
}

// pipeBytes is how many bytes wait unread in the pipe (FIONREAD, which
// x/sys/unix names TIOCINQ on Linux); 0 when it cannot tell.
func pipeBytes(f *os.File) int64 {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0
	}
	var n int
	_ = rc.Control(func(fd uintptr) {
		n, err = unix.IoctlGetInt(int(fd), unix.TIOCINQ) // FIONREAD
	})
	if err != nil {
		return 0
	}
	return int64(n)
}
