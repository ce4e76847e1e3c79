// Package handover carries a running agent's state across the execve of a
// new agent binary (live upgrade, docs/upgrade.md). PID 1 stays PID 1, so
// every child stays its child; what the new binary needs besides is in
// one State: each capability's section (JSON, written by the capability,
// read back by the same capability of the new build), the fds that must
// stay open (PTY masters, process pipes, listeners), and the pids its
// reaper must adopt before it reaps anything.
//
// The State travels in a sealed memfd whose number is in the new binary's
// environment (EnvFD). The kept fds keep their numbers: execve keeps every
// fd without close-on-exec, so Inherit clears that flag on exactly the
// recorded ones (and nothing else: every other fd of the agent is
// close-on-exec, agent.startupHygiene). Each File entry records the fd's
// identity (device, inode, type) so the new binary checks that fd N is the
// file the old one meant, not a number reused in between.
//
// A capability's part of an upgrade is, in the old binary: stop every
// goroutine that reads or writes its fds without closing them (Freeze),
// record its state (Save: Writer.File, Writer.Pid, Writer.Put), and undo
// the freeze if the exec fails (Thaw). In the new binary: read its section
// (Reader.Section), check every entry, then take its fds (Reader.File) and
// pids (Reader.Proc, through the caller's reaper) and rebuild its tables,
// all before the agent serves. A Reader in dry-run mode (the pre-flight: a
// child of the old agent runs the new binary on the state, with none of
// the fds) lets a capability check its section with no side effect:
// File then returns nil for a valid reference.
package handover

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"

	"golang.org/x/sys/unix"
)

// Format is the version of the State layout. A new binary refuses a
// format it does not know; sections carry versions of their own.
const Format = 1

// EnvFD names the environment variable that holds the memfd's number in
// the new binary.
const EnvFD = "TL_AGENT_HANDOVER_FD"

// MaxState bounds a State (PTY rings are its bulk: sessions times ring
// size, both bounded by their configs).
const MaxState = 1 << 30

// Ref names a kept fd inside a section: an index into State.Files.
type Ref int

// File is one fd kept open across the exec.
type File struct {
	FD   int    `json:"fd"`
	Name string `json:"name"` // what it is, for logs and errors ("pty 3f2a master")
	Dev  uint64 `json:"dev"`
	Ino  uint64 `json:"ino"`
	Mode uint32 `json:"mode"` // st_mode's type bits
}

// State is the whole hand-over.
type State struct {
	Format   int                        `json:"format"`
	From     string                     `json:"from"` // version of the binary that wrote it
	Sections map[string]json.RawMessage `json:"sections"`
	Files    []File                     `json:"files"`
	Pids     []int                      `json:"pids"`
}

// Writer builds a State in the old binary.
type Writer struct {
	st    State
	byFD  map[int]Ref
	pids  map[int]bool
	inher bool
}

// NewWriter starts a State written by version from.
func NewWriter(from string) *Writer {
	return &Writer{
		st:   State{Format: Format, From: from, Sections: map[string]json.RawMessage{}},
		byFD: map[int]Ref{},
		pids: map[int]bool{},
	}
}

// File records f to be kept open across the exec and returns its Ref. It
// does not change f (its blocking mode in particular: os.File.Fd would).
func (w *Writer) File(name string, f *os.File) (Ref, error) {
	if f == nil {
		return 0, errors.New("handover: nil file " + name)
	}
	sc, err := f.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("handover: %s: %w", name, err)
	}
	var ref Ref
	var ferr error
	if err := sc.Control(func(fd uintptr) { ref, ferr = w.FD(name, int(fd)) }); err != nil {
		return 0, fmt.Errorf("handover: %s: %w", name, err)
	}
	return ref, ferr
}

// FD records a raw fd (one the caller owns and keeps open until the exec).
func (w *Writer) FD(name string, fd int) (Ref, error) {
	if ref, ok := w.byFD[fd]; ok {
		return ref, nil
	}
	id, err := identify(fd)
	if err != nil {
		return 0, fmt.Errorf("handover: %s (fd %d): %w", name, fd, err)
	}
	id.Name = name
	ref := Ref(len(w.st.Files))
	w.st.Files = append(w.st.Files, id)
	w.byFD[fd] = ref
	return ref, nil
}

// Pid records a child the new agent's reaper must adopt.
func (w *Writer) Pid(pid int) {
	if pid > 0 && !w.pids[pid] {
		w.pids[pid] = true
		w.st.Pids = append(w.st.Pids, pid)
	}
}

// Put stores a capability's section (v is marshalled as JSON).
func (w *Writer) Put(section string, v any) error {
	if _, dup := w.st.Sections[section]; dup {
		return errors.New("handover: section " + section + " written twice")
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("handover: section %s: %w", section, err)
	}
	w.st.Sections[section] = b
	return nil
}

// Encode is the State as bytes (what Seal writes).
func (w *Writer) Encode() ([]byte, error) {
	sort.Ints(w.st.Pids)
	b, err := json.Marshal(&w.st)
	if err == nil && len(b) > MaxState {
		err = fmt.Errorf("handover: state of %d bytes is over the %d limit", len(b), MaxState)
	}
	return b, err
}

// Seal writes the State into a new sealed memfd (close-on-exec until
// Inherit) and returns it.
func (w *Writer) Seal() (*os.File, error) {
	b, err := w.Encode()
	if err != nil {
		return nil, err
	}
	return sealed(b)
}

// sealed is b in a memfd that nobody can change any more.
func sealed(b []byte) (*os.File, error) {
	fd, err := unix.MemfdCreate("tl-agent-handover", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, os.NewSyscallError("memfd_create", err)
	}
	f := os.NewFile(uintptr(fd), "tl-agent-handover")
	if _, err := f.Write(b); err != nil {
		f.Close()
		return nil, err
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_WRITE|unix.F_SEAL_GROW|unix.F_SEAL_SHRINK|unix.F_SEAL_SEAL); err != nil {
		f.Close()
		return nil, os.NewSyscallError("fcntl F_ADD_SEALS", err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil { // a reader starts at the state
		f.Close()
		return nil, err
	}
	return f, nil
}

// Inherit clears close-on-exec on every recorded fd, so the exec keeps
// them; Uninherit sets it back (the exec failed and the old agent goes on).
func (w *Writer) Inherit() error {
	for fd := range w.byFD {
		if err := setCloexec(fd, false); err != nil {
			w.Uninherit()
			return fmt.Errorf("handover: keep fd %d open across exec: %w", fd, err)
		}
	}
	w.inher = true
	return nil
}

// Uninherit undoes Inherit.
func (w *Writer) Uninherit() {
	for fd := range w.byFD {
		_ = setCloexec(fd, true)
	}
	w.inher = false
}

func setCloexec(fd int, on bool) error {
	v := 0
	if on {
		v = unix.FD_CLOEXEC
	}
	_, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, v)
	return err
}

func identify(fd int) (File, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return File{}, os.NewSyscallError("fstat", err)
	}
	return File{FD: fd, Dev: st.Dev, Ino: st.Ino, Mode: st.Mode & unix.S_IFMT}, nil
}

// Reader reads a State in the new binary (or in the pre-flight child).
type Reader struct {
	st      State
	dryRun  bool
	claimed []bool
	// taken keeps every file handed out reachable while the Reader is: an
	// os.File's finalizer closes its fd, and a restore that fails hands
	// the fds back to the old binary (Inherit), so none may be collected.
	taken []*os.File
}

// FromEnv opens the State named by EnvFD and unsets the variable (so no
// child inherits it). It returns nil, nil when the variable is not set: a
// normal start.
func FromEnv() (*Reader, error) {
	v, ok := os.LookupEnv(EnvFD)
	if !ok {
		return nil, nil
	}
	os.Unsetenv(EnvFD)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 0 {
		return nil, fmt.Errorf("handover: %s=%q is not an fd", EnvFD, v)
	}
	return Open(fd, false)
}

// Open reads the State in memfd fd (and closes fd). In dry-run mode the
// kept fds are not there: File checks references only.
func Open(fd int, dryRun bool) (*Reader, error) {
	f := os.NewFile(uintptr(fd), "tl-agent-handover")
	if f == nil {
		return nil, errors.New("handover: bad fd")
	}
	defer f.Close()
	// From offset 0 whatever the fd's offset (Seal leaves it at the end,
	// and a pre-flight child shares it with the old agent).
	b, err := io.ReadAll(io.NewSectionReader(f, 0, MaxState+1))
	if err != nil {
		return nil, fmt.Errorf("handover: read state: %w", err)
	}
	return Decode(b, dryRun)
}

// Decode parses an encoded State.
func Decode(b []byte, dryRun bool) (*Reader, error) {
	if len(b) > MaxState {
		return nil, fmt.Errorf("handover: state over the %d-byte limit", MaxState)
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("handover: state is not readable: %w", err)
	}
	if st.Format != Format {
		return nil, fmt.Errorf("handover: state format %d, this build reads %d", st.Format, Format)
	}
	for i, f := range st.Files {
		if f.FD < 0 {
			return nil, fmt.Errorf("handover: file %d (%s) has fd %d", i, f.Name, f.FD)
		}
	}
	return &Reader{st: st, dryRun: dryRun, claimed: make([]bool, len(st.Files))}, nil
}

// DryRun reports whether this is the pre-flight (no fds, no side effects).
func (r *Reader) DryRun() bool { return r.dryRun }

// From is the version of the binary that wrote the State.
func (r *Reader) From() string { return r.st.From }

// Pids are the children to adopt, in order.
func (r *Reader) Pids() []int { return r.st.Pids }

// Sections are the names of the sections present (sorted).
func (r *Reader) Sections() []string {
	names := make([]string, 0, len(r.st.Sections))
	for n := range r.st.Sections {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Section decodes a section into v; false when the State has none (an
// older binary that did not write it).
func (r *Reader) Section(name string, v any) (bool, error) {
	raw, ok := r.st.Sections[name]
	if !ok {
		return false, nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return true, fmt.Errorf("handover: section %s: %w", name, err)
	}
	return true, nil
}

// File takes the kept fd ref, once, after checking it is the file the old
// binary recorded. In dry-run mode it checks the reference and returns nil.
// The returned file is the caller's (it sets the blocking mode it needs).
func (r *Reader) File(ref Ref) (*os.File, error) {
	if ref < 0 || int(ref) >= len(r.st.Files) {
		return nil, fmt.Errorf("handover: no file %d (the state has %d)", ref, len(r.st.Files))
	}
	if r.claimed[ref] {
		return nil, fmt.Errorf("handover: file %d (%s) taken twice", ref, r.st.Files[ref].Name)
	}
	want := r.st.Files[ref]
	if r.dryRun {
		return nil, nil
	}
	got, err := identify(want.FD)
	if err != nil {
		return nil, fmt.Errorf("handover: %s: %w", want.Name, err)
	}
	if got.Dev != want.Dev || got.Ino != want.Ino || got.Mode != want.Mode {
		return nil, fmt.Errorf("handover: fd %d is not %s any more", want.FD, want.Name)
	}
	r.claimed[ref] = true
	_ = setCloexec(want.FD, true) // no child of the new agent inherits it
	f := os.NewFile(uintptr(want.FD), want.Name)
	r.taken = append(r.taken, f)
	return f, nil
}

// Unclaimed lists the kept fds no capability took (a section this build
// does not read): Close closes them so nothing leaks.
func (r *Reader) Unclaimed() []File {
	var out []File
	for i, c := range r.claimed {
		if !c {
			out = append(out, r.st.Files[i])
		}
	}
	return out
}

// Close closes every kept fd nobody claimed (not in dry-run mode).
func (r *Reader) Close() {
	if r.dryRun {
		return
	}
	for i, c := range r.claimed {
		if !c {
			r.claimed[i] = true
			_ = unix.Close(r.st.Files[i].FD)
		}
	}
}

// Inherit clears close-on-exec again on every kept fd, claimed or not: a
// new binary that cannot restore hands everything back to the old one.
// An fd closed since (a part that took it and closed it) is skipped: there
// is nothing left to hand back, and the old binary's identity check
// refuses whatever reuses the number.
func (r *Reader) Inherit() error {
	for _, f := range r.st.Files {
		if err := setCloexec(f.FD, false); err != nil && !errors.Is(err, unix.EBADF) {
			return fmt.Errorf("handover: keep fd %d (%s) open across exec: %w", f.FD, f.Name, err)
		}
	}
	return nil
}

// Reseal is the State as read, in a new memfd: what a failed restore
// hands back to the old binary.
func (r *Reader) Reseal() (*os.File, error) {
	b, err := json.Marshal(&r.st)
	if err != nil {
		return nil, err
	}
	return sealed(b)
}
