package files

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/identity"
)

// TestOverwriteKeepsOwner: a new file is the owner's; an existing one
// keeps its owner, group and mode, setuid included (root only: chown).
func TestOverwriteKeepsOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown")
	}
	home := t.TempDir()
	mux := http.NewServeMux()
	fs, err := New(Config{Owner: &identity.User{Name: "ghost", UID: 2345, GID: 2346, Home: home}}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	fs.Routes(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	put := func(p, body string) (int, string) {
		return do(t, "PUT", srv.URL+"/api/v1/files?path="+url.QueryEscape(p), body)
	}
	existing := filepath.Join(home, "root-owned")
	if err := os.WriteFile(existing, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(existing, 0, 7); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(existing, 0o750|os.ModeSetgid); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("root-owned", filepath.Join(home, "link")); err != nil {
		t.Fatal(err)
	}
	if code, body := put("link", "through the link"); code != 204 {
		t.Fatalf("PUT link: %d %s", code, body)
	}
	if fi, err := os.Lstat(filepath.Join(home, "link")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("link replaced: %v %v", fi, err)
	}
	if data, _ := os.ReadFile(existing); string(data) != "through the link" {
		t.Fatalf("write through the link: target holds %q", data)
	}
	for _, c := range []struct {
		name     string
		uid, gid uint32
		mode     uint32
	}{
		{"root-owned", 0, 7, 0o2750},
		{"new", 2345, 2346, 0o644},
	} {
		if code, body := put(c.name, "new"); code != 204 {
			t.Fatalf("PUT %s: %d %s", c.name, code, body)
		}
		fi, err := os.Lstat(filepath.Join(home, c.name))
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != c.uid || st.Gid != c.gid || st.Mode&0o7777 != c.mode {
			t.Errorf("%s: %o %d:%d, want %o %d:%d", c.name, st.Mode&0o7777, st.Uid, st.Gid, c.mode, c.uid, c.gid)
		}
	}
}

// TestKernelFSNoCreate: a new file on /proc is refused with a clear code
// before anything is written (this machine's /proc: nothing exists to
// change).
func TestKernelFSNoCreate(t *testing.T) {
	srv := filesServer(t)
	code, body := do(t, "PUT", srv.URL+"/api/v1/files?path="+url.QueryEscape("/proc/sys/kernel/tl-no-such-sysctl"), "1")
	if code != 400 || !strings.Contains(body, codeNoCreate) {
		t.Fatalf("got %d %s, want 400 %s", code, body, codeNoCreate)
	}
}

// TestWriteOverSpecialRefused: a FIFO (a device alike) is neither
// written into nor replaced by a file.
func TestWriteOverSpecialRefused(t *testing.T) {
	srv := filesServer(t)
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	code, body := do(t, "PUT", srv.URL+"/api/v1/files?path="+url.QueryEscape(fifo), "x")
	if code != 400 || !strings.Contains(body, "NOT_A_REGULAR_FILE") {
		t.Fatalf("got %d %s, want 400 NOT_A_REGULAR_FILE", code, body)
	}
	if fi, err := os.Lstat(fifo); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		t.Fatalf("FIFO replaced: %v %v", fi, err)
	}
}

// A client that goes away mid-upload (fewer bytes than its
// Content-Length, then the connection closed) leaves the file as it was
// and no temporary file: io.ReadFull's ErrUnexpectedEOF for a short last
// buffer is no end of the body when the body itself says it was cut.
func TestCutUploadLeavesFileWhole(t *testing.T) {
	srv := filesServer(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	if err := os.WriteFile(path, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "PUT /api/v1/files?path=%s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", url.QueryEscape(path), 1<<20)
	if _, err := c.Write(bytes.Repeat([]byte("n"), 300<<10)); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	_, _ = io.Copy(io.Discard, c) // the server's answer, if any, then its close
	c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ents, _ := os.ReadDir(dir)
		if len(ents) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("left in the folder: %v", ents)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got, _ := os.ReadFile(path); string(got) != "old" {
		t.Fatalf("the cut upload replaced the file: %d bytes", len(got))
	}
}
