// Package files serves the Files section of the sandbox API: read, write,
// delete and list, with paths relative to the sandbox user's home.
//
// The agent runs as root and performs the operations itself; everything a
// write creates (a new file and any parent folders) is then given to the
// sandbox user with fchown on the open file or lchown, never following a
// symlink, while a file written over keeps its owner, group and mode
// (write.go owns those rules). Writes stream to a temporary file in the
// target's folder and are renamed over the target, so a reader sees the
// old file or the new one, never half of one; kernel file systems and
// mount points, where that cannot work, are written in place. Bodies are
// copied through one fixed buffer, so memory does not grow with file size.
//
// Only regular files are read: a FIFO's open waits for a writer forever
// and a device may stream without end, each holding an OS thread of PID 1
// for as long (internal/threads). Reads open with O_NONBLOCK and check
// the open file's type before reading; listings open with O_DIRECTORY.
// Every blocking file syscall goes through the process-wide gate of
// internal/threads, so the agent's thread count stays bounded whatever
// the number of requests.
package files

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/tensorlake/tl-agent/identity"
	"github.com/tensorlake/tl-agent/internal/copybuf"
	"github.com/tensorlake/tl-agent/internal/httpx"
	"github.com/tensorlake/tl-agent/internal/reqid"
	"github.com/tensorlake/tl-agent/internal/threads"
)

// Config names the user files belong to.
type Config struct {
	// Owner is the sandbox user, resolved once by the agent after
	// provisioning: written files and folders belong to it and relative
	// paths start at its home. Required.
	Owner *identity.User
	// Gate bounds the blocking file syscalls in flight (default: the
	// process-wide threads.Blocking).
	Gate *threads.Gate
}

// Server is the files capability.
type Server struct {
	cfg  Config
	gate *threads.Gate
	log  zerolog.Logger
}

// Validate refuses a config without an owner: files written as root
// would be the agent's, not the user's.
func (c Config) Validate() error {
	if c.Owner == nil {
		return errors.New("files config: Owner is required")
	}
	return nil
}

// New returns the files capability, or the reason cfg is not valid.
func New(cfg Config, log zerolog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Gate == nil {
		cfg.Gate = threads.Blocking
	}
	return &Server{cfg: cfg, gate: cfg.Gate, log: log.With().Str("component", "files").Logger()}, nil
}

// Routes adds the Files section of the API.
func (s *Server) Routes(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/files", s.handleRead)
	mux.HandleFunc("PUT /api/v1/files", s.handleWrite)
	mux.HandleFunc("DELETE /api/v1/files", s.handleDelete)
	mux.HandleFunc("GET /api/v1/files/list", s.handleList)
}

// Error codes besides the spec's.
const (
	codeInvalid   = "INVALID_REQUEST"
	codeTraversal = "PATH_TRAVERSAL"
	codeIsDir     = "IS_DIRECTORY"
	codeNotDir    = "NOT_A_DIRECTORY"
	codeNotFound  = "NOT_FOUND"
	codeNotEmpty  = "DIRECTORY_NOT_EMPTY"
	codeNotFile   = "NOT_A_REGULAR_FILE"
	codeNoSpace   = "NO_SPACE"
	codeIO        = "IO_ERROR"
)

// resolve turns the path= query into a clean absolute path. A ".." element
// anywhere is refused outright (403) rather than cleaned away, as the
// spec asks; names merely containing dots ("a..b") are fine.
func (s *Server) resolve(w http.ResponseWriter, r *http.Request) (string, *identity.User, bool) {
	p := r.URL.Query().Get("path")
	if err := checkPath(p); err != nil {
		status := http.StatusBadRequest
		if err.code == codeTraversal {
			status = http.StatusForbidden
		}
		httpx.WriteError(w, status, err.code, err.msg)
		return "", nil, false
	}
	u := s.cfg.Owner
	return joinPath(u.Home, p), u, true
}

// pathError is a refused path= value.
type pathError struct{ code, msg string }

// checkPath applies the API's rules to a path= value: present, no NUL, and
// no ".." element anywhere.
func checkPath(p string) *pathError {
	switch {
	case p == "":
		return &pathError{codeInvalid, "query parameter path is required"}
	case strings.ContainsRune(p, 0):
		return &pathError{codeInvalid, "path contains a NUL byte"}
	}
	for _, el := range strings.Split(p, "/") {
		if el == ".." {
			return &pathError{codeTraversal, "path must not contain '..'"}
		}
	}
	return nil
}

// joinPath makes a checked path absolute (relative to home) and clean.
func joinPath(home, p string) string {
	if !filepath.IsAbs(p) {
		p = filepath.Join(home, p)
	}
	return filepath.Clean(p)
}

// fsError answers a file system failure on path. The message names path
// (the user's target), never a temporary file beside it, and the cause.
func fsError(w http.ResponseWriter, path string, err error) {
	switch {
	case errors.Is(err, errNotRegular):
		httpx.WriteError(w, http.StatusBadRequest, codeNotFile, path+" is not a regular file (a FIFO, socket or device is never read, written or replaced)")
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		httpx.WriteError(w, http.StatusInsufficientStorage, codeNoSpace, "no space left on the device of "+path)
	case errors.Is(err, fs.ErrNotExist):
		httpx.WriteError(w, http.StatusNotFound, codeNotFound, "no such file or folder: "+path)
	case errors.Is(err, syscall.ENOTDIR):
		httpx.WriteError(w, http.StatusBadRequest, codeNotDir, "a parent of "+path+" is not a folder")
	case errors.Is(err, syscall.EISDIR):
		httpx.WriteError(w, http.StatusBadRequest, codeIsDir, path+" is a folder")
	case errors.Is(err, fs.ErrPermission):
		httpx.WriteError(w, http.StatusForbidden, "PERMISSION_DENIED", "permission denied: "+path)
	default:
		httpx.WriteError(w, http.StatusInternalServerError, codeIO, path+": "+cause(err).Error())
	}
}

// cause strips the operation and file name from err: those may name a
// temporary file the user never asked about.
func cause(err error) error {
	var pe *fs.PathError
	var le *os.LinkError
	var se *os.SyscallError
	switch {
	case errors.As(err, &pe):
		return pe.Err
	case errors.As(err, &le):
		return le.Err
	case errors.As(err, &se):
		return se.Err
	}
	return err
}

// errNotRegular marks a path that is neither a regular file nor a folder;
// errNotFolder a listing of something else than a folder.
var (
	errNotRegular = errors.New("not a regular file")
	errNotFolder  = errors.New("not a folder")
)

// openRegular opens path for reading without ever blocking: O_NONBLOCK
// makes the open of a FIFO return at once instead of waiting for a
// writer, and the open file's own type (fstat, so a swap after the first
// stat changes nothing) decides. Folders give EISDIR, anything else but a
// regular file errNotRegular. O_NONBLOCK is then cleared: reads of a
// regular file behave as after a plain open.
func openRegular(path string) (*os.File, fs.FileInfo, error) {
	// Refuse by stat first, so a device is not even opened (some act on
	// open: a tape rewinds, a tty becomes ours without O_NOCTTY).
	if fi, err := os.Stat(path); err != nil {
		return nil, nil, err
	} else if err := regular(fi); err != nil {
		return nil, nil, err
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	fi, err := f.Stat()
	if err == nil {
		err = regular(fi)
	}
	if err == nil {
		err = unix.SetNonblock(fd, false)
	}
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, fi, nil
}

func regular(fi fs.FileInfo) error {
	switch {
	case fi.IsDir():
		return syscall.EISDIR
	case !fi.Mode().IsRegular():
		return errNotRegular
	}
	return nil
}

func (s *Server) handleRead(w http.ResponseWriter, r *http.Request) {
	path, _, ok := s.resolve(w, r)
	if !ok {
		return
	}
	var f *os.File
	var fi fs.FileInfo
	err := s.gate.Do(func() (err error) { f, fi, err = openRegular(path); return err })
	if errors.Is(err, syscall.EISDIR) {
		httpx.WriteError(w, http.StatusBadRequest, codeIsDir, path+" is a folder; use /api/v1/files/list")
		return
	}
	if err != nil {
		fsError(w, path, err)
		return
	}
	defer f.Close()
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	if fi.Size() > 0 {
		s.serveSized(w, r, f, fi)
		return
	}
	// Files of /proc and /sys say size 0 and are not empty: those are
	// streamed (chunked), whole, without ranges or validators.
	h.Set("Last-Modified", fi.ModTime().UTC().Format(http.TimeFormat))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	buf := copybuf.Get()
	defer copybuf.Put(buf)
	// Each read holds a slot of the gate; the network write does not.
	if _, err := io.CopyBuffer(writerOnly{w}, readerOnly{s.gate.Reader(f)}, buf); err != nil {
		log := reqid.Logger(r.Context(), s.log)
		log.Debug().Err(err).Str("path", path).Msg("download ended early")
	}
}

// maxRanges bounds the ranges of one request: each is a part of a
// multipart answer, and a header of tiny ranges would make a huge one.
const maxRanges = 16

// serveSized serves a regular file with a real size through
// http.ServeContent: Range (one range: 206 with Content-Range; several:
// multipart/byteranges; unsatisfiable: 416), If-Range, If-None-Match and
// If-Match against the ETag, If-Modified-Since and If-Unmodified-Since
// against Last-Modified (304 and 412). Reads hold the gate as streaming
// ones do; copies go in copybuf.Size steps.
func (s *Server) serveSized(w http.ResponseWriter, r *http.Request, f *os.File, fi fs.FileInfo) {
	if rg := r.Header.Get("Range"); strings.Count(rg, ",") >= maxRanges {
		httpx.WriteError(w, http.StatusRequestedRangeNotSatisfiable, codeInvalid,
			fmt.Sprintf("at most %d ranges per request", maxRanges))
		return
	}
	w.Header().Set("ETag", etag(fi))
	bw := &bigCopies{ResponseWriter: w, size: fi.Size()}
	http.ServeContent(bw, r, "", fi.ModTime(), gatedFile{gate: s.gate, f: f})
}

// etag names one version of a file: its inode, size and modification time
// in nanoseconds. A rewrite (a new file renamed over, or a write in
// place) changes it.
func etag(fi fs.FileInfo) string {
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	return fmt.Sprintf(`"%x-%x-%x"`, ino, fi.Size(), fi.ModTime().UnixNano())
}

// gatedFile is the file as http.ServeContent reads it: reads through the
// gate, seeks (no I/O) direct.
type gatedFile struct {
	gate *threads.Gate
	f    *os.File
}

func (g gatedFile) Read(p []byte) (int, error) {
	g.gate.Enter()
	defer g.gate.Leave()
	return g.f.Read(p)
}

func (g gatedFile) Seek(off int64, whence int) (int64, error) { return g.f.Seek(off, whence) }

// bigCopies hands ServeContent's copy of a range to the response as a
// fileRange, and turns ServeContent's plain-text 416 into the API's JSON
// error.
type bigCopies struct {
	http.ResponseWriter
	size    int64
	refused bool // a 416 was answered: ServeContent's own text is dropped
}

// ReadFrom takes ServeContent's copy (io.CopyN of the file) and gives the
// response writer's own ReadFrom a fileRange: through the uplink its
// bytes are spliced, else copied in copybuf.Size steps (the response writer's
// own copy goes in 32 KiB steps, a syscall and a frame each).
func (b *bigCopies) ReadFrom(r io.Reader) (int64, error) {
	if lr, ok := r.(*io.LimitedReader); ok {
		if g, ok := lr.R.(gatedFile); ok {
			if rf, ok := b.ResponseWriter.(io.ReaderFrom); ok {
				n, err := rf.ReadFrom(&fileRange{gate: g.gate, f: g.f, left: lr.N})
				lr.N -= n
				return n, err
			}
		}
	}
	buf := copybuf.Get()
	defer copybuf.Put(buf)
	return io.CopyBuffer(writerOnly{b.ResponseWriter}, readerOnly{r}, buf)
}

// fileRange is the next left bytes of a regular file being downloaded.
// It is a PipeFiller (uplink): over the uplink its bytes go from the page
// cache to the socket by splice(2), never copied through the agent. Each
// read and each fill holds a slot of the gate, as all file I/O does.
type fileRange struct {
	gate *threads.Gate
	f    *os.File
	left int64
}

func (r *fileRange) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), r.left)]
	r.gate.Enter()
	n, err := r.f.Read(p)
	r.gate.Leave()
	r.left -= int64(n)
	return n, err
}

// WriteTo is the copy where splice is not taken (a direct listener, TLS
// uplinks): copybuf.Size steps.
func (r *fileRange) WriteTo(w io.Writer) (int64, error) {
	buf := copybuf.Get()
	defer copybuf.Put(buf)
	return io.CopyBuffer(writerOnly{w}, readerOnly{r}, buf)
}

// FillPipe moves up to n of the range's bytes into the pipe fd: the
// pipe then holds references to the file's pages, not copies. It reads
// at the file's offset, as Read does, and ends with io.EOF when the range
// is sent or the file ends early (it shrank).
func (r *fileRange) FillPipe(fd int, n int) (int, error) {
	if r.left <= 0 {
		return 0, io.EOF
	}
	rc, err := r.f.SyscallConn()
	if err != nil {
		return 0, err
	}
	want := int(min(int64(n), r.left))
	var k int64
	var serr error
	r.gate.Enter()
	err = rc.Read(func(ffd uintptr) bool {
		for {
			k, serr = unix.Splice(int(ffd), nil, fd, nil, want, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			if serr != unix.EINTR {
				return true
			}
		}
	})
	r.gate.Leave()
	if err == nil {
		err = serr
	}
	if err != nil {
		return 0, err
	}
	if k == 0 {
		return 0, io.EOF
	}
	r.left -= k
	return int(k), nil
}

func (b *bigCopies) WriteHeader(code int) {
	if code == http.StatusRequestedRangeNotSatisfiable {
		b.refused = true
		b.Header().Del("X-Content-Type-Options")
		httpx.WriteError(b.ResponseWriter, code, codeInvalid,
			fmt.Sprintf("range not satisfiable: the file has %d bytes", b.size))
		return
	}
	b.ResponseWriter.WriteHeader(code)
}

func (b *bigCopies) Write(p []byte) (int, error) {
	if b.refused {
		return len(p), nil
	}
	return b.ResponseWriter.Write(p)
}

// writerOnly and readerOnly keep CopyBuffer on our one buffer.
type writerOnly struct{ io.Writer }
type readerOnly struct{ io.Reader }

func (s *Server) handleDelete(w http.ResponseWriter, r *http.Request) {
	path, _, ok := s.resolve(w, r)
	if !ok {
		return
	}
	err := s.gate.Do(func() error {
		if _, err := os.Lstat(path); err != nil {
			return err
		}
		return os.Remove(path)
	})
	if err != nil {
		if errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EEXIST) {
			httpx.WriteError(w, http.StatusBadRequest, codeNotEmpty, path+" is a folder that is not empty")
			return
		}
		fsError(w, path, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// Entry is one row of a folder listing.
type Entry struct {
	Name       string `json:"name"`
	IsDir      bool   `json:"is_dir"`
	Size       *int64 `json:"size"`
	ModifiedAt int64  `json:"modified_at"`
}

// maxEntries bounds one listing's answer.
const maxEntries = 100000

func (s *Server) handleList(w http.ResponseWriter, r *http.Request) {
	path, _, ok := s.resolve(w, r)
	if !ok {
		return
	}
	var entries []Entry
	err := s.gate.Do(func() (err error) { entries, err = readFolder(path); return err })
	if errors.Is(err, errNotFolder) {
		httpx.WriteError(w, http.StatusBadRequest, codeNotDir, path+" is not a folder")
		return
	}
	if err != nil {
		fsError(w, path, err)
		return
	}
	sort.Slice(entries, func(i, j int) bool {
		if entries[i].IsDir != entries[j].IsDir {
			return entries[i].IsDir
		}
		return entries[i].Name < entries[j].Name
	})
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"path": path, "entries": entries})
}

// readFolder lists path. O_DIRECTORY makes the open itself refuse
// anything but a folder (ENOTDIR), so a FIFO swapped in after the stat
// cannot make it wait.
func readFolder(path string) ([]Entry, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return nil, errNotFolder
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOTDIR) {
		return nil, errNotFolder
	}
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	d := os.NewFile(uintptr(fd), path)
	defer d.Close()
	des, err := d.ReadDir(maxEntries)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	entries := make([]Entry, 0, len(des))
	for _, de := range des {
		entries = append(entries, entryOf(path, de))
	}
	return entries, nil
}

// entryOf describes de; a symlink is described by its target (a link to
// a folder lists as a folder), or by itself when dangling.
func entryOf(dir string, de fs.DirEntry) Entry {
	e := Entry{Name: de.Name()}
	fi, err := os.Stat(filepath.Join(dir, de.Name()))
	if err != nil {
		if fi, err = de.Info(); err != nil {
			return e
		}
	}
	e.IsDir = fi.IsDir()
	e.ModifiedAt = fi.ModTime().UnixMilli()
	if !e.IsDir {
		size := fi.Size()
		e.Size = &size
	}
	return e
}
