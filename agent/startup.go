package agent

import (
	"errors"
	"os"
	"strconv"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/tensorlake/tl-agent/internal/threads"
)

// startupHygiene runs first in Main, before anything can fork:
//
//   - every fd the agent inherited above stderr is marked close-on-exec, so
//     no child (API, SSH or PTY) gets the launcher's leftovers (seen: fd 10
//     on /dev/null and a pipe of the runtime). They stay open for the
//     agent: closing what it did not open could break a launcher that
//     watches a pipe for the agent's exit.
//   - the thread reserve is made while the pids limit still has room
//     (internal/threads says why PID 1 needs it), beside the rest of the
//     start, after the early uplink's handshake; no fork happens before it
//     is made.
func startupHygiene(log zerolog.Logger, early *EarlyUplink) {
	if err := cloexecInherited(); err != nil {
		log.Warn().Err(err).Msg("cannot mark inherited fds close-on-exec; children may inherit them")
	}
	before, n := threads.Count(), threads.DefaultReserve
	// Leave the kernel some pids of its own: the reserve must not itself
	// hit the limit (an abort at start). Inside a cgroup whose limit is
	// already nearly full the reserve is smaller, and says so.
	if room := threads.Headroom(); room >= 0 && room-8 < n {
		n = max(room-8, 0)
		log.Warn().Int("headroom", room).Int("reserve", n).Msg("pids limit nearly full at start: smaller thread reserve")
	}
	// In the background (1.6 ms of the start on a 2-core VM): the reaper
	// forks nothing before it is made (threads.WaitReserve). It starts
	// once the early uplink's handshake is over, or after reserveWait: the
	// handshake's answers are handled at once only while a P is idle.
	start := time.Now()
	threads.ReserveInBackground(n, early.settledOr(reserveWait), func(after int) {
		log.Info().Int("threads_before", before).Int("threads", after).Int("reserve", n).
			Int("blocking_gate", threads.Blocking.Size()).Dur("took", time.Since(start)).Msg("thread reserve made")
	})
}

// reserveWait bounds how long the thread reserve (and so the first fork)
// waits for the early uplink's handshake.
const reserveWait = 20 * time.Millisecond

// cloexecInherited sets FD_CLOEXEC on every fd from 3 up: close_range(2)
// does it in one call (Linux 5.11), else each fd listed in /proc/self/fd.
func cloexecInherited() error {
	err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	if err == nil || !(errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL)) {
		return err
	}
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return err
	}
	for _, name := range names {
		fd, err := strconv.Atoi(name)
		if err != nil || fd < 3 {
			continue
		}
		// The folder's own fd is in the list (already close-on-exec);
		// a gone fd answers EBADF, nothing to mark.
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil && !errors.Is(err, unix.EBADF) {
			return err
		}
	}
	return nil
}
