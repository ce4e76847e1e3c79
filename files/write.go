package files

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/tensorlake/tl-agent/identity"
	"github.com/tensorlake/tl-agent/internal/copybuf"
	"github.com/tensorlake/tl-agent/internal/httpx"
	"github.com/tensorlake/tl-agent/internal/reqid"
)

// The write path. Who owns what it writes:
//
//   - a new file, and every folder the write creates, belongs to the
//     sandbox user (the spec: files belong to the acting user);
//   - an existing regular file keeps its owner, group and mode (setuid,
//     setgid and sticky bits included): PUT over /etc/passwd must not
//     hand it to tl-user, nor a sudoers drop-in lose root and 0440, which
//     sudo demands. Extended attributes and ACLs are not copied;
//   - on a kernel file system (kernelFS: /proc, /sys, cgroups) nothing
//     can be created, so temp+rename cannot work: an existing file is
//     written in place, a missing one is refused with CANNOT_CREATE;
//   - a symlink is written through: the file it names is the one
//     written over (a dangling link is replaced by a new file);
//   - a FIFO, socket or device is never written nor replaced
//     (NOT_A_REGULAR_FILE, as for reads);
//   - a file that is a mount point (a bind-mounted /etc/hosts or
//     /etc/resolv.conf in a container) cannot be renamed over (EBUSY):
//     the finished upload is copied into it in place.

// Error codes of the write path.
const (
	codeNoCreate = "CANNOT_CREATE"
	codeRefused  = "WRITE_REFUSED"
	codeReadOnly = "READ_ONLY_FILE_SYSTEM"
)

// errKernelFS marks a new file wanted on a kernel file system;
// errRefused a value the kernel refused (EINVAL from an in-place write).
var (
	errKernelFS = errors.New("files cannot be created on a kernel file system")
	errRefused  = errors.New("refused by the kernel")
)

// kernelFS names the file systems whose files are the kernel's interface
// (statfs magic numbers): they take writes in place and no new files.
var kernelFS = map[int64]string{
	unix.PROC_SUPER_MAGIC:    "proc",
	unix.SYSFS_MAGIC:         "sysfs",
	unix.CGROUP_SUPER_MAGIC:  "cgroup",
	unix.CGROUP2_SUPER_MAGIC: "cgroup2",
	unix.DEBUGFS_MAGIC:       "debugfs",
	unix.TRACEFS_MAGIC:       "tracefs",
	unix.SECURITYFS_MAGIC:    "securityfs",
	unix.BPF_FS_MAGIC:        "bpf",
}

// target is what a write finds at its path.
type target struct {
	exists   bool // a regular file is there
	uid, gid int
	mode     fs.FileMode
	kernelFS string // the kernel file system the folder is on, or ""
}

// inspect looks at path before a write: the file it replaces, and
// whether its folder is on a kernel file system.
func inspect(path string, u *identity.User) (target, error) {
	t := target{uid: int(u.UID), gid: int(u.GID), mode: 0o644}
	fi, err := os.Lstat(path)
	if err == nil && fi.Mode()&(fs.ModeNamedPipe|fs.ModeSocket|fs.ModeDevice|fs.ModeCharDevice) != 0 {
		// Renaming over a device node or a FIFO would replace it with a
		// file of tl-user's (/dev/null, say); writing into it could block
		// or act on hardware.
		return t, errNotRegular
	}
	if err == nil && fi.Mode().IsRegular() {
		st := fi.Sys().(*syscall.Stat_t)
		t.exists, t.uid, t.gid = true, int(st.Uid), int(st.Gid)
		t.mode = fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(filepath.Dir(path), &sfs); err == nil {
		t.kernelFS = kernelFS[int64(sfs.Type)]
	}
	if t.kernelFS != "" && !t.exists {
		return t, fmt.Errorf("%w (%s)", errKernelFS, t.kernelFS)
	}
	return t, nil
}

func (s *Server) handleWrite(w http.ResponseWriter, r *http.Request) {
	path, u, ok := s.resolve(w, r)
	if !ok {
		return
	}
	var isDir bool
	_ = s.gate.Do(func() error {
		// A symlink is written through, as a shell's > does: the link
		// stays and the file it names keeps its owner and mode. A
		// dangling one is replaced by the new file.
		if real, err := filepath.EvalSymlinks(path); err == nil {
			path = real
		}
		fi, err := os.Stat(path)
		isDir = err == nil && fi.IsDir()
		return nil
	})
	if isDir {
		httpx.WriteError(w, http.StatusBadRequest, codeIsDir, path+" is a folder")
		return
	}
	dir := filepath.Dir(path)
	if err := s.gate.Do(func() error { return mkdirAllOwned(dir, u) }); err != nil {
		fsError(w, dir, err)
		return
	}
	var t target
	err := s.gate.Do(func() (err error) { t, err = inspect(path, u); return err })
	var n int64
	body := upload(r)
	switch {
	case err != nil:
	case t.kernelFS != "":
		n, err = s.writeInPlace(path, r.Body)
	default:
		n, err = s.writeAtomic(path, body, t)
	}
	if wentDirect(body) {
		w.Header().Set("Connection", "close") // upload.go
	}
	if err != nil {
		writeError(w, path, err)
		return
	}
	log := reqid.Logger(r.Context(), s.log)
	log.Debug().Str("path", path).Int64("bytes", n).Str("kernel_fs", t.kernelFS).Bool("from_chunks", wentDirect(body)).Msg("file written")
	w.WriteHeader(http.StatusNoContent)
}

// writeError answers a failed write: the write path's own refusals, then
// fsError's.
func writeError(w http.ResponseWriter, path string, err error) {
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe), errors.Is(err, errBody):
		httpx.WriteError(w, http.StatusBadRequest, codeInvalid, "upload interrupted: "+err.Error())
	case errors.Is(err, errKernelFS):
		httpx.WriteError(w, http.StatusBadRequest, codeNoCreate,
			path+": "+err.Error()+"; only its existing files are written, in place")
	case errors.Is(err, errRefused):
		httpx.WriteError(w, http.StatusBadRequest, codeRefused, path+": the value written was "+err.Error())
	case errors.Is(err, syscall.EROFS):
		httpx.WriteError(w, http.StatusForbidden, codeReadOnly, path+" is on a read-only file system")
	default:
		fsError(w, path, err)
	}
}

// errBody marks a failure reading the request body (client gone).
var errBody = errors.New("reading the request body")

// writeAtomic streams body into a temporary file beside path, made as t
// says (owner, group, mode), and renames it over path. File syscalls hold
// a slot of the gate; reading the body (the network) does not.
func (s *Server) writeAtomic(path string, body io.Reader, t target) (int64, error) {
	var f *os.File
	err := s.gate.Do(func() (err error) { f, err = createTemp(path, t); return err })
	if err != nil {
		return 0, err
	}
	tmp, renamed := f.Name(), false
	defer func() {
		if !renamed {
			_ = s.gate.Do(func() error { f.Close(); return os.Remove(tmp) })
		}
	}()
	var n int64
	if b, ok := body.(*uploadBody); ok {
		n, err = b.fill(f, s.gate.Do)
	} else {
		buf := copybuf.Get()
		n, err = copyBody(s.gate.Writer(f), body, buf)
		copybuf.Put(buf)
	}
	if err != nil {
		return 0, err
	}
	err = s.gate.Do(func() error {
		// Again after the writes, which clear setuid and setgid.
		if err := f.Chmod(t.mode); err != nil {
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		err := os.Rename(tmp, path)
		renamed = err == nil
		return err
	})
	if errors.Is(err, syscall.EBUSY) && t.exists {
		// path is a mount point: fill it in place from the upload.
		var src *os.File
		if err = s.gate.Do(func() (err error) { src, err = os.Open(tmp); return err }); err != nil {
			return 0, err
		}
		defer func() { _ = s.gate.Do(src.Close) }()
		return s.writeInPlace(path, readerOnly{s.gate.Reader(src)})
	}
	if err != nil {
		return 0, err
	}
	return n, nil
}

// createTemp makes the temporary file beside path with t's owner, group
// and mode.
func createTemp(path string, t target) (*os.File, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tl-upload-*")
	if err != nil {
		return nil, err
	}
	// fchown on the descriptor: nothing can be swapped in under us. chmod
	// after chown, which clears setuid and setgid.
	err = f.Chown(t.uid, t.gid)
	if err == nil {
		err = f.Chmod(t.mode)
	}
	if err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, err
	}
	return f, nil
}

// writeInPlace truncates the existing regular file path and writes body
// into it: its owner, group and mode stay. Opened as reads are (never
// following a symlink, never blocking on a FIFO, the open file's own type
// checked), so only a regular file is written.
func (s *Server) writeInPlace(path string, body io.Reader) (int64, error) {
	var f *os.File
	err := s.gate.Do(func() error {
		fd, err := unix.Open(path, unix.O_WRONLY|unix.O_TRUNC|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
		if err != nil {
			return &fs.PathError{Op: "open", Path: path, Err: err}
		}
		f = os.NewFile(uintptr(fd), path)
		fi, err := f.Stat()
		if err == nil {
			err = regular(fi)
		}
		if err == nil {
			err = unix.SetNonblock(fd, false)
		}
		if err != nil {
			f.Close()
		}
		return err
	})
	if err != nil {
		return 0, err
	}
	buf := copybuf.Get()
	n, err := copyBody(s.gate.Writer(f), body, buf)
	copybuf.Put(buf)
	if cerr := s.gate.Do(f.Close); err == nil {
		err = cerr
	}
	if errors.Is(err, syscall.EINVAL) && !errors.Is(err, errBody) {
		err = fmt.Errorf("%w: %w", errRefused, cause(err))
	}
	return n, err
}

// copyBody copies body to f, telling body errors (the client) from file
// errors (the disk). It fills the buffer before each write, so a body of
// up to the buffer (copybuf.Size; SmallSize past copybuf.MaxBig copies
// at once) is one write(2): kernel files (sysctls) take a value in
// one write.
//
// io.ReadFull says io.ErrUnexpectedEOF for a last buffer the body ended
// in, and so does net/http's reader of a body cut before its length (the
// client went away mid-upload): only the body's own error is a failure,
// so a cut upload never replaces the file with its first part.
func copyBody(f io.Writer, body io.Reader, buf []byte) (int64, error) {
	src := &bodyReader{r: body}
	var total int64
	for {
		n, rerr := io.ReadFull(src, buf)
		if n > 0 {
			if _, err := f.Write(buf[:n]); err != nil {
				return total, err
			}
			total += int64(n)
		}
		if src.err != nil {
			return total, fmt.Errorf("%w: %v", errBody, src.err)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			return total, nil
		}
		if rerr != nil {
			return total, fmt.Errorf("%w: %v", errBody, rerr)
		}
	}
}

// bodyReader keeps the body's first error other than io.EOF.
type bodyReader struct {
	r   io.Reader
	err error
}

func (b *bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF && b.err == nil {
		b.err = err
	}
	return n, err
}

// mkdirAllOwned creates dir and missing parents, each given to u (lchown:
// a symlink is never followed for ownership).
func mkdirAllOwned(dir string, u *identity.User) error {
	fi, err := os.Stat(dir)
	if err == nil {
		if !fi.IsDir() {
			return syscall.ENOTDIR
		}
		return nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if parent := filepath.Dir(dir); parent != dir {
		if err := mkdirAllOwned(parent, u); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return os.Lchown(dir, int(u.UID), int(u.GID))
}
