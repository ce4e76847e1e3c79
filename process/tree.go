package process

import (
	"strconv"
	"syscall"

	"github.com/tensorlake/tl-agent/supervisor"
)

// cookieEnv is set in every process the table starts, with the process's
// handle. Descendants inherit it, so a kill of the tree also finds those
// that left the process group (setsid) and were reparented to the agent
// after their parent died: ancestry alone cannot find them.
const cookieEnv = "TL_PROCESS_HANDLE"

// killTree sends SIGKILL to a process's tree: the process group led by
// pid, every descendant of pid, and every process carrying the handle's
// cookie (supervisor.Kill repeats while new victims appear). Best effort:
// it never fails.
func killTree(pid, handle int) { signalTree(syscall.SIGKILL, pid, handle) }

// signalTree sends sig to a process's tree, as killTree defines it.
func signalTree(sig syscall.Signal, pid, handle int) {
	supervisor.Kill(sig, supervisor.Scope{
		Group:       pid,
		Descendants: pid,
		Env:         cookieEnv + "=" + strconv.Itoa(handle),
	})
}
