package launch

import (
	"encoding/binary"
	"errors"
	"io"
	"os"
	"os/exec"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The incubator: every user command starts as a small program that waits
// on fd 3 for the agent's go-ahead, then execve's the real program with
// the real argv, environment and fds. Between fork and the go-ahead the
// agent, as root, writes the child's oom_score_adj and moves it into the
// workload cgroup (SetHeadroom): the child is our unreaped child, blocked,
// so the pid cannot be reused and no instruction of the user's program
// runs at PID 1's score or in PID 1's cgroup. Go's os/exec has no
// pre-exec hook; this is Tailscale's tailssh incubator, with the
// privileged part left in the agent. fd 3 is close-on-exec in the
// incubator: the program never sees it.
//
// Two programs speak this protocol (argv [incubatorArg0, path, argv...]):
// the stub, a static ELF without libc run from a sealed memfd (stub.go),
// and, where the stub cannot run, the agent's own binary
// (/proc/self/exe), whose init below catches argv[0] before main. The Go
// one costs a Go runtime start (~4 ms), the stub one more exec (~0.2 ms).
//
// If the final execve fails the incubator reports the errno on fd 3 and
// exits 127 (ENOENT) or 126, so Start's caller gets the same error os/exec
// would have given (Classify maps it the same way).
const incubatorArg0 = "tl-agent-incubator"

// incubatorExe is the Go incubator: the agent itself.
const incubatorExe = "/proc/self/exe"

// startWait bounds how long a start waits for the incubator's exec.
const startWait = 30 * time.Second

func init() {
	if len(os.Args) >= 3 && os.Args[0] == incubatorArg0 {
		os.Exit(incubate(os.Args[1], os.Args[2:]))
	}
}

// incubate runs in the child: wait for the go-ahead, exec.
func incubate(path string, argv []string) int {
	const fd = 3
	_ = syscall.SetNonblock(fd, false)
	var b [4]byte
	for {
		n, err := syscall.Read(fd, b[:1])
		if err == syscall.EINTR {
			continue
		}
		if n != 1 {
			return 125 // the agent went away or gave up on this start
		}
		break
	}
	syscall.CloseOnExec(fd)
	err := syscall.Exec(path, argv, os.Environ())
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		errno = syscall.EINVAL
	}
	binary.LittleEndian.PutUint32(b[:], uint32(errno))
	_, _ = syscall.Write(fd, b[:])
	if errno == syscall.ENOENT {
		return 127
	}
	return 126
}

// Headroom is what the agent does to each child before its program runs.
type Headroom struct {
	// OOMScoreAdj is written to the child's oom_score_adj (when Set).
	OOMScoreAdj int
	SetOOM      bool
	// Procs, when set, is the workload cgroup's cgroup.procs (v2) or tasks
	// file (v1) the child's pid is written to.
	Procs []string
	// Failed counts children whose score or cgroup could not be set.
	Failed *atomic.Int64
}

var headroom atomic.Pointer[Headroom]

// SetHeadroom sets what every later start applies (the agent calls it
// once at start-up; nil for nothing).
func SetHeadroom(h *Headroom) { headroom.Store(h) }

// Started is what a start gives: its pid, stable once the start returned
// (unlike cmd.Process.Pid, which the reaper's Release clears).
type Started interface{ PID() int }

// StartCmd starts cmd through the incubator with start (the reaper's
// Start) and returns once the real program runs, or with the error os/exec
// would have returned for it (classify it with Classify). cmd must not
// set ExtraFiles: fds 3 and 4 are the incubator's until its exec. The
// first start makes the stub and probes it with start (one short process
// of the agent's own, before the command's).
func StartCmd[P Started](cmd *exec.Cmd, start func(*exec.Cmd) (P, error)) (P, error) {
	var sf *os.File
	if cmd.Path != "/proc/self/exe" && cmd.Path != "/proc/thread-self/exe" {
		// (The agent's own binary: in the stub that name is the stub.)
		sf = stubFile(start)
	}
	return startVia(cmd, start, sf)
}

// startVia is StartCmd through the stub in the memfd sf, or the Go
// incubator when sf is nil.
func startVia[P Started](cmd *exec.Cmd, start func(*exec.Cmd) (P, error), sf *os.File) (P, error) {
	path := cmd.Path
	p, ours, err := fork(cmd, start, sf)
	if err != nil {
		return p, err
	}
	defer ours.Close()
	release(p.PID())
	if err := execStatus(ours, path); err != nil {
		return p, err
	}
	return p, nil
}

// fork starts cmd's incubator, the stub from the memfd sf or the Go one
// when sf is nil, blocked on its fd 3, and returns the agent's end of fd
// 3. cmd is as given on return; a failed fork's error names cmd.Path.
func fork[P Started](cmd *exec.Cmd, start func(*exec.Cmd) (P, error), sf *os.File) (P, *os.File, error) {
	var zero P
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return zero, nil, os.NewSyscallError("socketpair", err)
	}
	_ = unix.SetNonblock(fds[0], true)
	ours, theirs := os.NewFile(uintptr(fds[0]), "incubator"), os.NewFile(uintptr(fds[1]), "incubator")
	path, args := cmd.Path, cmd.Args
	cmd.Path, cmd.ExtraFiles = incubatorExe, []*os.File{theirs}
	if sf != nil {
		cmd.Path, cmd.ExtraFiles = stubPath, []*os.File{theirs, sf} // fd 3, fd 4
	}
	cmd.Args = append([]string{incubatorArg0, path}, args...)
	p, err := start(cmd)
	theirs.Close()
	cmd.Path, cmd.Args, cmd.ExtraFiles = path, args, nil
	if err != nil {
		ours.Close()
		var pe *os.PathError
		if errors.As(err, &pe) && (pe.Path == incubatorExe || pe.Path == stubPath) {
			pe.Path = path
		}
		return zero, nil, err
	}
	return p, ours, nil
}

// release applies the headroom to pid (the blocked incubator).
func release(pid int) {
	h := headroom.Load()
	if h == nil {
		return
	}
	ok := true
	if h.SetOOM {
		ok = writeFile("/proc/"+strconv.Itoa(pid)+"/oom_score_adj", strconv.Itoa(h.OOMScoreAdj)) == nil
	}
	for _, f := range h.Procs {
		if writeFile(f, strconv.Itoa(pid)) != nil {
			ok = false
		}
	}
	if !ok && h.Failed != nil {
		h.Failed.Add(1)
	}
}

func writeFile(name, v string) error {
	f, err := os.OpenFile(name, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(v)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// execStatus sends the go-ahead and reads the incubator's answer: EOF when
// its exec succeeded (fd 3 closed on exec), an errno when it failed.
func execStatus(f *os.File, path string) error {
	if _, err := f.Write([]byte{1}); err != nil {
		// The incubator died before the go-ahead (killed, OOM): its exit
		// is what the caller will see.
		return nil
	}
	_ = f.SetReadDeadline(time.Now().Add(startWait))
	var b [4]byte
	if _, err := io.ReadFull(f, b[:]); err != nil {
		return nil // EOF: the program runs (or a stopped incubator: it is the caller's process now)
	}
	return &os.PathError{Op: "fork/exec", Path: path, Err: syscall.Errno(binary.LittleEndian.Uint32(b[:]))}
}
