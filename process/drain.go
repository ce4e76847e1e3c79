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
// Each capturer counts the bytes it took from its pipe. The target is the
// pipe's unread bytes, then the size of a read in progress, then the
// count, in that order: a read's bytes leave the pipe before the count
// takes them, so without the middle term a read caught between the two
// made the target short, the reads were cut with bytes of the exit still
// in the pipe, and a line was cut in two (TestRunSlowReaderAfterExit, now
// and then). So the target may count up to one read too many, never miss
// a byte; an empty pipe means everything written was taken.
func drainAfterExit(caps []*capturer, drained <-chan struct{}, grace time.Duration) {
	targets := make([]int64, len(caps))
	for i, c := range caps {
		targets[i] = c.exitTarget()
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

// exitTarget is how many bytes the capturer must have taken to have
// every byte in its pipe now (at the exit), in the order drainAfterExit
// explains.
func (c *capturer) exitTarget() int64 {
	return pipeBytes(c.f) + c.reading.Load() + c.got.Load()
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
