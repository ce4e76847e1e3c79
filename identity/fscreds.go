package identity

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Filesystem credentials for work the agent (root) does on a user's behalf
// in-process, such as the unix-socket syscalls of SSH forwards: connect
// checks write permission on the socket, bind creates the socket file,
// unlink needs write permission on the folder. Running them with u's
// filesystem ids makes the kernel apply u's permissions and give u the
// files made.
//
// How: on an OS thread locked for the call, setgroups, setfsgid and
// setfsuid as raw per-thread syscalls (Go's syscall.Setgroups would change
// every thread of PID 1). When fsuid leaves 0 the kernel clears the
// filesystem capabilities (CAP_DAC_OVERRIDE, CAP_FOWNER, ...) from the
// thread's effective set, and restores them when it returns to 0. The ids
// are put back before the thread is unlocked; if that fails the goroutine
// ends locked, so the runtime kills the thread rather than reuse it.
//
// Only a few syscalls run under the switch, never a wait, and at most
// maxFSCalls at once, so this pins at most that many threads for
// microseconds (threads are scarce under a pids limit), and creates none
// that outlives the call.

// maxFSCalls bounds concurrent switched threads in the whole process.
const maxFSCalls = 4

var fsSlots = make(chan struct{}, maxFSCalls)

// ErrFSCreds is returned when the thread's credentials could not be
// switched; fn has not run.
var ErrFSCreds = errors.New("cannot take the user's filesystem credentials")

// AsUser runs fn with u's filesystem credentials (uid, gid, supplementary
// groups) on a thread of its own, and returns fn's error. fn must be short
// and must not block on anything but its own syscalls. When the agent is
// not root, fn runs as is: it already has no more rights than its caller.
func (u *User) AsUser(fn func() error) error {
	if os.Geteuid() != 0 {
		return fn()
	}
	if u.UID == 0 && u.GID == 0 {
		return fn()
	}
	fsSlots <- struct{}{}
	defer func() { <-fsSlots }()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		err, restored := u.switched(fn)
		if restored {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// switched runs fn between switching the calling (locked) thread to u and
// back; restored is false when the thread could not be put back.
func (u *User) switched(fn func() error) (err error, restored bool) {
	orig, err := getgroups()
	if err != nil {
		return fmt.Errorf("%w: %v", ErrFSCreds, err), true
	}
	// setfs[ug]id report no error; an invalid id (-1) changes nothing and
	// answers the current value, which is how each step is checked.
	const query = ^uint32(0)
	origUID, origGID := setfsuid(query), setfsgid(query)
	groups := append([]uint32{u.GID}, u.Groups...)
	restore := func() bool {
		setfsuid(origUID)
		setfsgid(origGID)
		return setgroups(orig) == nil && setfsuid(query) == origUID && setfsgid(query) == origGID
	}
	if err := setgroups(groups); err != nil {
		return fmt.Errorf("%w: setgroups: %v", ErrFSCreds, err), restore()
	}
	setfsgid(u.GID)
	setfsuid(u.UID)
	if setfsuid(query) != u.UID || setfsgid(query) != u.GID {
		return fmt.Errorf("%w: setfsuid/setfsgid had no effect", ErrFSCreds), restore()
	}
	err = fn()
	return err, restore()
}

func setfsuid(id uint32) uint32 {
	r, _, _ := unix.RawSyscall(unix.SYS_SETFSUID, uintptr(id), 0, 0)
	return uint32(r)
}

func setfsgid(id uint32) uint32 {
	r, _, _ := unix.RawSyscall(unix.SYS_SETFSGID, uintptr(id), 0, 0)
	return uint32(r)
}

// setgroups sets the calling thread's supplementary groups only.
func setgroups(gids []uint32) error {
	var p unsafe.Pointer
	if len(gids) > 0 {
		p = unsafe.Pointer(&gids[0])
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(gids)), uintptr(p), 0); e != 0 {
		return e
	}
	return nil
}

func getgroups() ([]uint32, error) {
	n, _, e := unix.RawSyscall(unix.SYS_GETGROUPS, 0, 0, 0)
	if e != 0 {
		return nil, e
	}
	if n == 0 {
		return nil, nil
	}
	gids := make([]uint32, n)
	m, _, e := unix.RawSyscall(unix.SYS_GETGROUPS, n, uintptr(unsafe.Pointer(&gids[0])), 0)
	if e != 0 {
		return nil, e
	}
	return gids[:m], nil
}
