// Package files serves the Files section of the sandbox API: read, write,
// delete and list, with paths relative to the sandbox user's home.
//
// The agent runs as root and performs the operations itself; everything a
// write creates (the file and any parent folders) is then given to the
// sandbox user with fchown on the open file or lchown, never following a
// symlink. Writes stream to a temporary file in the target's folder and
// are renamed over the target, so a reader sees the old file or the new
// one, never half of one. Bodies are copied through one fixed buffer, so
// memory does not grow with file size.
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
	"sync"
	"syscall"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/identity"
	"github.com/tensorlake/tl-agent/internal/httpx"
)

// Config names the user files belong to.
type Config struct {
	User string // the sandbox user, owner of written files (tl-user)
}

// Server is the files capability.
type Server struct {
	cfg Config
	log zerolog.Logger
}

// New returns the files capability.
func New(cfg Config, log zerolog.Logger) *Server {
	if cfg.User == "" {
		cfg.User = identity.DefaultUser
	}
	return &Server{cfg: cfg, log: log.With().Str("component", "files").Logger()}
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
	codeIO        = "IO_ERROR"
)

// owner is who written files belong to: the sandbox user, resolved per
// request because provisioning may create it after the agent starts.
func (s *Server) owner() *identity.User {
	u, err := identity.Lookup(s.cfg.User)
	if err != nil {
		return &identity.User{Name: s.cfg.User, UID: 1000, GID: 1000, Home: "/home/" + s.cfg.User}
	}
	return u
}

// resolve turns the path= query into a clean absolute path. A ".." element
// anywhere is refused outright (403) rather than cleaned away, as the
// spec asks; names merely containing dots ("a..b") are fine.
func (s *Server) resolve(w http.ResponseWriter, r *http.Request) (string, *identity.User, bool) {
	p := r.URL.Query().Get("path")
	if p == "" {
		httpx.WriteError(w, http.StatusBadRequest, codeInvalid, "query parameter path is required")
		return "", nil, false
	}
	if strings.ContainsRune(p, 0) {
		httpx.WriteError(w, http.StatusBadRequest, codeInvalid, "path contains a NUL byte")
		return "", nil, false
	}
	for _, el := range strings.Split(p, "/") {
		if el == ".." {
			httpx.WriteError(w, http.StatusForbidden, codeTraversal, "path must not contain '..'")
			return "", nil, false
		}
	}
	u := s.owner()
	if !filepath.IsAbs(p) {
		p = filepath.Join(u.Home, p)
	}
	return filepath.Clean(p), u, true
}

func fsError(w http.ResponseWriter, path string, err error) {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		httpx.WriteError(w, http.StatusNotFound, codeNotFound, "no such file or folder: "+path)
	case errors.Is(err, syscall.ENOTDIR):
		httpx.WriteError(w, http.StatusBadRequest, codeNotDir, "a parent of "+path+" is not a folder")
	case errors.Is(err, syscall.EISDIR):
		httpx.WriteError(w, http.StatusBadRequest, codeIsDir, path+" is a folder")
	case errors.Is(err, fs.ErrPermission):
		httpx.WriteError(w, http.StatusForbidden, "PERMISSION_DENIED", "permission denied: "+path)
	default:
		httpx.WriteError(w, http.StatusInternalServerError, codeIO, err.Error())
	}
}

// bufSize is the copy buffer of uploads and downloads.
const bufSize = 256 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

func (s *Server) handleRead(w http.ResponseWriter, r *http.Request) {
	path, _, ok := s.resolve(w, r)
	if !ok {
		return
	}
	f, err := os.Open(path)
	if err != nil {
		fsError(w, path, err)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		fsError(w, path, err)
		return
	}
	if fi.IsDir() {
		httpx.WriteError(w, http.StatusBadRequest, codeIsDir, path+" is a folder; use /api/v1/files/list")
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Last-Modified", fi.ModTime().UTC().Format(http.TimeFormat))
	if fi.Mode().IsRegular() && fi.Size() > 0 {
		// Files of /proc and /sys say size 0 and are not empty: those
		// are sent chunked.
		h.Set("Content-Length", fmt.Sprint(fi.Size()))
	}
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	if _, err := io.CopyBuffer(writerOnly{w}, readerOnly{f}, *bp); err != nil {
		s.log.Debug().Err(err).Str("path", path).Msg("download ended early")
	}
}

// writerOnly and readerOnly keep CopyBuffer on our one buffer.
type writerOnly struct{ io.Writer }
type readerOnly struct{ io.Reader }

func (s *Server) handleWrite(w http.ResponseWriter, r *http.Request) {
	path, u, ok := s.resolve(w, r)
	if !ok {
		return
	}
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		httpx.WriteError(w, http.StatusBadRequest, codeIsDir, path+" is a folder")
		return
	}
	dir := filepath.Dir(path)
	if err := mkdirAllOwned(dir, u); err != nil {
		fsError(w, dir, err)
		return
	}
	n, err := writeAtomic(path, r.Body, u)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) || errors.Is(err, errBody) {
			httpx.WriteError(w, http.StatusBadRequest, codeInvalid, "upload interrupted: "+err.Error())
			return
		}
		fsError(w, path, err)
		return
	}
	s.log.Debug().Str("path", path).Int64("bytes", n).Msg("file written")
	w.WriteHeader(http.StatusNoContent)
}

// errBody marks a failure reading the request body (client gone).
var errBody = errors.New("reading the request body")

// writeAtomic streams body into a temporary file beside path, gives it to
// u, and renames it over path. An existing file's mode is kept.
func writeAtomic(path string, body io.Reader, u *identity.User) (int64, error) {
	mode := fs.FileMode(0o644)
	if fi, err := os.Lstat(path); err == nil && fi.Mode().IsRegular() {
		mode = fi.Mode().Perm()
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tl-upload-*")
	if err != nil {
		return 0, err
	}
	tmp := f.Name()
	fail := func(err error) (int64, error) {
		f.Close()
		os.Remove(tmp)
		return 0, err
	}
	// fchown on the descriptor: nothing can be swapped in under us.
	if err := f.Chown(int(u.UID), int(u.GID)); err != nil {
		return fail(err)
	}
	if err := f.Chmod(mode); err != nil {
		return fail(err)
	}
	bp := bufPool.Get().(*[]byte)
	n, err := copyBody(f, body, *bp)
	bufPool.Put(bp)
	if err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return 0, err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return 0, err
	}
	return n, nil
}

// copyBody copies body to f, telling body errors (the client) from file
// errors (the disk).
func copyBody(f *os.File, body io.Reader, buf []byte) (int64, error) {
	var total int64
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if _, err := f.Write(buf[:n]); err != nil {
				return total, err
			}
			total += int64(n)
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, fmt.Errorf("%w: %v", errBody, rerr)
		}
	}
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

func (s *Server) handleDelete(w http.ResponseWriter, r *http.Request) {
	path, _, ok := s.resolve(w, r)
	if !ok {
		return
	}
	if _, err := os.Lstat(path); err != nil {
		fsError(w, path, err)
		return
	}
	if err := os.Remove(path); err != nil {
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
	fi, err := os.Stat(path)
	if err != nil {
		fsError(w, path, err)
		return
	}
	if !fi.IsDir() {
		httpx.WriteError(w, http.StatusBadRequest, codeNotDir, path+" is not a folder")
		return
	}
	d, err := os.Open(path)
	if err != nil {
		fsError(w, path, err)
		return
	}
	defer d.Close()
	des, err := d.ReadDir(maxEntries)
	if err != nil && !errors.Is(err, io.EOF) {
		fsError(w, path, err)
		return
	}
	entries := make([]Entry, 0, len(des))
	for _, de := range des {
		entries = append(entries, entryOf(path, de))
	}
	sort.Slice(entries, func(i, j int) bool {
		if entries[i].IsDir != entries[j].IsDir {
			return entries[i].IsDir
		}
		return entries[i].Name < entries[j].Name
	})
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"path": path, "entries": entries})
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
