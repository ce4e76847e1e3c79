package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path"
	"path/filepath"
	"strings"
	"syscall"
)

// cpBuf is the one copy buffer: a file of any size is streamed through it,
// never held whole in memory.
const cpBuf = 256 << 10

func runCp(cfg config, args []string) error {
	fs := newFlags("cp", &cfg)
	quiet := fs.Bool("quiet", false, "no progress bar")
	pos, _, err := parseArgs(fs, args, 0)
	if err != nil {
		return err
	}
	if err := wantArgs("cp", pos, 2, 2); err != nil {
		return err
	}
	srcSbx, srcPath := splitSandboxPath(pos[0])
	dstSbx, dstPath := splitSandboxPath(pos[1])
	switch {
	case srcSbx != "" && dstSbx != "":
		return usageErrorf("Cannot copy between two sandboxes. One side must be local.")
	case srcSbx == "" && dstSbx == "":
		return usageErrorf("One of src or dest must be a sandbox path (identifier:/path).")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if srcSbx != "" {
		t, err := cfg.sandbox(srcSbx)
		if err != nil {
			return err
		}
		return download(ctx, t, srcPath, dstPath, !*quiet)
	}
	t, err := cfg.sandbox(dstSbx)
	if err != nil {
		return err
	}
	return upload(ctx, t, srcPath, dstPath, !*quiet)
}

// splitSandboxPath reads `<sandbox>:<path>`; a one-letter prefix is a
// Windows drive, as in the seed, and a path with a '/' before the colon
// is local (./a:b).
func splitSandboxPath(s string) (sandbox, p string) {
	i := strings.IndexByte(s, ':')
	if i > 1 && !strings.Contains(s[:i], "/") {
		return s[:i], s[i+1:]
	}
	return "", s
}

func filesPath(p string) string { return "/api/v1/files?path=" + url.QueryEscape(p) }

func upload(ctx context.Context, t *target, local, remote string, progress bool) error {
	f, err := os.Open(local)
	if err != nil {
		return fmt.Errorf("Local file not found: %s (%v)", local, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return usageErrorf("%s is not a regular file: tl sbx cp copies one file", local)
	}
	if remote == "" || strings.HasSuffix(remote, "/") {
		remote += filepath.Base(local) // into that folder, as cp does
	}
	bar := newProgress(progress, filepath.Base(local), st.Size())
	body := &countingReader{r: f, bar: bar}
	req, err := t.request(ctx, http.MethodPut, filesPath(remote), io.NopCloser(body))
	if err != nil {
		return err
	}
	req.ContentLength = st.Size()
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := t.do(req, "upload file")
	bar.done(err == nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	fmt.Printf("%s -> %s:%s (%d bytes)\n", local, t.sandbox, remote, st.Size())
	return nil
}

func download(ctx context.Context, t *target, remote, local string, progress bool) error {
	req, err := t.request(ctx, http.MethodGet, filesPath(remote), nil)
	if err != nil {
		return err
	}
	resp, err := t.do(req, "download file")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if local == "" || strings.HasSuffix(local, "/") || isDir(local) {
		local = filepath.Join(local, path.Base(remote))
	}
	// Into a temporary file beside the destination, renamed at the end:
	// an interrupted copy never leaves half a file under the real name.
	tmp, err := os.CreateTemp(filepath.Dir(local), "."+filepath.Base(local)+".tl-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	bar := newProgress(progress, path.Base(remote), resp.ContentLength)
	n, err := io.CopyBuffer(onlyWriter{tmp}, &countingReader{r: resp.Body, bar: bar}, make([]byte, cpBuf))
	bar.done(err == nil)
	if err == nil && resp.ContentLength >= 0 && n != resp.ContentLength {
		err = fmt.Errorf("got %d of %d bytes", n, resp.ContentLength)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("failed to download file: %v", err)
	}
	if err := os.Chmod(tmp.Name(), 0o666&^umask()); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), local); err != nil {
		return err
	}
	fmt.Printf("%s:%s -> %s (%d bytes)\n", t.sandbox, remote, local, n)
	return nil
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

// umask reads the process's umask (CreateTemp makes files 0600; the copy
// gets what a plain create would).
func umask() os.FileMode {
	m := syscall.Umask(0)
	syscall.Umask(m)
	return os.FileMode(m)
}

// onlyWriter hides ReadFrom so CopyBuffer uses the fixed buffer.
type onlyWriter struct{ io.Writer }

// countingReader feeds the progress bar.
type countingReader struct {
	r   io.Reader
	bar *progress
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.bar.add(int64(n))
	return n, err
}
