package launch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tensorlake/tl-agent/internal/httpx"
	"golang.org/x/sys/unix"
)

// The stub incubator: the same protocol as the Go one (incubator.go), run
// by a 664-byte static ELF without libc (stub/incubator.c, embedded per
// architecture as stubELF) instead of a re-exec of the agent's 13.7 MB
// binary, whose Go runtime start cost ~4 ms per command
// (docs/benchmarks.md). The first start writes the blob once into a
// sealed memfd (nothing on disk to tamper with or to clean up) and probes
// it; every later start passes the memfd as the child's fd 4 and execs
// /proc/self/fd/4. As fd 4 the memfd is the one file Go's fork cannot
// stomp on (it dups the child's fds above the highest one it passes); the
// stub closes it, as it marks fd 3 close-on-exec, so the program sees
// neither.
//
// The Go incubator stays the fallback: no blob for this architecture, a
// memfd that may not be executed (vm.memfd_noexec = 2, a security
// module), or a probe that did not come back with the errno it asked for.
// The probe runs as the agent; a command runs as its user, which changes
// nothing for the exec of the memfd: it is mode 0111 (sealed), and a
// process may always look up its own /proc/self/fd, dumpable or not
// (TestStubAsOtherUser).
const (
	stubPath = "/proc/self/fd/4"
	// stubProbes bounds the probes whose start failed for a reason that
	// is neither the stub's nor a lack of resources (the shutdown): after
	// that many the Go incubator is kept.
	stubProbes = 3
)

var stub struct {
	mu     sync.Mutex
	probes int // guarded by mu
	// file is the sealed memfd once the probe passed; nil before and when
	// the stub is off. Never closed: a start may be using it.
	file   atomic.Pointer[os.File]
	off    atomic.Bool
	reason atomic.Pointer[string]
}

// Incubator says which incubator starts commands: "stub" (the embedded
// static one), "go" (a re-exec of the agent's binary) with the reason,
// or "" before the first start decided.
func Incubator() (kind, reason string) {
	switch {
	case stub.file.Load() != nil:
		return "stub", ""
	case stub.off.Load():
		return "go", *stub.reason.Load()
	}
	return "", ""
}

// stubFile returns the memfd to start the stub from, or nil for the Go
// incubator. The first call makes and probes it with start.
func stubFile[P Started](start func(*exec.Cmd) (P, error)) *os.File {
	if f := stub.file.Load(); f != nil || stub.off.Load() {
		return f
	}
	stub.mu.Lock()
	defer stub.mu.Unlock()
	if f := stub.file.Load(); f != nil || stub.off.Load() {
		return f
	}
	f, err := makeStub()
	decided := true
	if err == nil {
		decided, err = probeStub(f, start)
	}
	switch {
	case err == nil:
		stub.file.Store(f)
		return f
	case httpx.IsExhausted(err):
		// A full pids cgroup or fd table: not the stub's doing, and no
		// reason to give up on it. The next start tries again.
	case decided:
		stubOff(err.Error())
	default:
		if stub.probes++; stub.probes >= stubProbes {
			stubOff(err.Error())
		}
	}
	if f != nil {
		f.Close()
	}
	return nil
}

// KeepGoIncubator makes every later start use the Go incubator (the
// agent's --incubator go: a way out should the stub misbehave somewhere,
// and the benchmark's comparison, tl-bench -only commands).
func KeepGoIncubator(reason string) {
	stub.mu.Lock()
	defer stub.mu.Unlock()
	stubOff(reason)
}

func stubOff(reason string) {
	stub.reason.Store(&reason)
	stub.off.Store(true)
	stub.file.Store(nil)
}

// makeStub writes the blob into a sealed, executable memfd.
func makeStub() (*os.File, error) {
	if len(stubELF) == 0 {
		return nil, errors.New("no stub for " + runtime.GOARCH)
	}
	const name = "tl-agent-incubator"
	flags := unix.MFD_CLOEXEC | unix.MFD_ALLOW_SEALING
	// MFD_EXEC (Linux 6.3) asks for an executable memfd where
	// vm.memfd_noexec = 1 would seal it non-executable; older kernels
	// refuse the flag (EINVAL) and make every memfd executable.
	fd, err := unix.MemfdCreate(name, flags|unix.MFD_EXEC)
	if err == unix.EINVAL {
		fd, err = unix.MemfdCreate(name, flags)
	}
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w%s", err, noexecNote())
	}
	f := os.NewFile(uintptr(fd), "memfd:"+name)
	if _, err := f.Write(stubELF); err != nil {
		f.Close()
		return nil, fmt.Errorf("memfd write: %w", err)
	}
	// Execute-only: a process that execs a file it cannot read is not
	// dumpable, so another process of the same user can neither ptrace
	// the waiting stub nor write its /proc/pid/mem to run code before the
	// agent has moved it (the Go incubator, a readable binary, can be).
	// Its program's exec makes it dumpable again as usual.
	if err := f.Chmod(0o111); err != nil {
		f.Close()
		return nil, fmt.Errorf("memfd chmod: %w", err)
	}
	// No write, resize, chmod (F_SEAL_EXEC, Linux 6.3) or new seal from
	// now on, by anyone holding the fd.
	seals := unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	_, err = unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, seals|unix.F_SEAL_EXEC)
	if err == unix.EINVAL {
		_, err = unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, seals)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("memfd seal: %w", err)
	}
	return f, nil
}

// noexecNote names vm.memfd_noexec when it forbids executable memfds.
func noexecNote() string {
	b, err := os.ReadFile("/proc/sys/vm/memfd_noexec")
	if v := strings.TrimSpace(string(b)); err == nil && v != "0" {
		return " (vm.memfd_noexec = " + v + ")"
	}
	return ""
}

// probeStub runs the stub once, as the agent, with its own name as the
// program: /proc/self/fd/4 after the stub closed fd 4, so it must come
// back with ENOENT on fd 3. That proves each of its syscalls (close,
// fcntl, read, execve, write). decided is false when the start failed for
// a reason that is not the stub's.
func probeStub[P Started](f *os.File, start func(*exec.Cmd) (P, error)) (decided bool, err error) {
	cmd := &exec.Cmd{Path: stubPath, Args: []string{"probe"}}
	_, ours, err := fork(cmd, start, f)
	if err != nil {
		return execRefused(err), err
	}
	defer ours.Close()
	if _, err := ours.Write([]byte{1}); err != nil {
		return true, fmt.Errorf("probe: the stub died before the go-ahead: %w", err)
	}
	_ = ours.SetReadDeadline(time.Now().Add(startWait))
	var b [4]byte
	if _, err := io.ReadFull(ours, b[:]); err != nil {
		return true, fmt.Errorf("probe: no answer from the stub: %w", err)
	}
	if e := syscall.Errno(binary.LittleEndian.Uint32(b[:])); e != syscall.ENOENT {
		return true, fmt.Errorf("probe: the stub answered %v, want ENOENT", e)
	}
	return true, nil
}

// execRefused reports a start whose exec was refused (as a stub's is by a
// policy on memfds), as opposed to one the system could not fork now.
func execRefused(err error) bool {
	var pe *os.PathError
	if !errors.As(err, &pe) || pe.Op != "fork/exec" {
		return false
	}
	switch pe.Err {
	case syscall.EACCES, syscall.EPERM, syscall.ENOEXEC, syscall.ENOENT, syscall.ETXTBSY, syscall.ELOOP:
		return true
	}
	return false
}
