// Package pausetest pauses the calling process for real, for tests of
// code that must tell running time from paused time.
package pausetest

import (
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// StopSelf stops this process with SIGSTOP (a real pause, as `kill -STOP`
// of the agent or a debugger gives: every thread stops, CLOCK_MONOTONIC
// runs on) and returns once a helper has continued it after d.
func StopSelf(t testing.TB, d time.Duration) {
	t.Helper()
	cont := exec.Command("sh", "-c", "sleep "+strconv.FormatFloat(d.Seconds(), 'f', 3, 64)+"; kill -CONT "+strconv.Itoa(os.Getpid()))
	// Its own session: a Ctrl-C of the test must not leave us stopped.
	cont.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cont.Start(); err != nil {
		t.Fatalf("helper: %v", err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP: %v", err)
	}
	_ = cont.Wait()
}
