package main

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/tensorlake/tl-agent/integration"
)

func init() { register("files", benchFiles) }

// benchFiles measures upload and download through the Files API
// (PUT/GET /api/v1/files via tl-proxy) against OpenSSH's sftp in the same
// run. Both write to a tmpfs (the sandbox's overlay lives on one; sftp
// writes under /dev/shm), from the same source file, so the disk is out of
// the comparison. The floor is a local copy of the same file.
func benchFiles(e *Env) []Result {
	size := int64(1 << 30)
	if e.Quick {
		size = 256 << 20
	}
	srcPath := e.File("files-src.bin", size)
	shm, err := os.MkdirTemp("/dev/shm", "tl-bench-")
	if err != nil {
		e.Fatalf("tmpfs dir: %v", err)
	}
	e.Cleanup(func() { os.RemoveAll(shm) })

	// The best of two local copies: the first may still read from disk.
	floorUp := max(timed(size, func() { e.Run("cp", srcPath, filepath.Join(shm, "floor.bin")) }),
		timed(size, func() { e.Run("cp", srcPath, filepath.Join(shm, "floor.bin")) }))
	floorDown := timed(size, func() { e.Run("cp", filepath.Join(shm, "floor.bin"), "/dev/null") })
	os.Remove(filepath.Join(shm, "floor.bin"))

	o := e.OpenSSH()
	remote := filepath.Join(shm, "sftp.bin")
	sftp := func(cmd string) {
		c := exec.Command("sftp", append(sftpArgs(o), "-b", "-", o.Dest())...)
		c.Stdin = strings.NewReader(cmd + "\n")
		if out, err := c.CombinedOutput(); err != nil {
			e.Fatalf("sftp %s: %v: %s", cmd, err, out)
		}
	}
	sftpUp := timed(size, func() { sftp("put " + srcPath + " " + remote) })
	sftpDown := timed(size, func() { sftp("get " + remote + " /dev/null") })
	os.Remove(remote)

	s := e.System(integration.Options{})
	path := "/api/v1/files?path=" + url.QueryEscape("/tmp/bench.bin")
	oursUp := timed(size, func() {
		f, err := os.Open(srcPath)
		if err != nil {
			e.Fatalf("open: %v", err)
		}
		defer f.Close()
		req := s.Request(context.Background(), "PUT", path, f)
		req.ContentLength = size
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 204 {
			e.Fatalf("PUT: %v %v", resp, err)
		}
		resp.Body.Close()
	})
	oursDown := timed(size, func() {
		resp, err := http.DefaultClient.Do(s.Request(context.Background(), "GET", path, nil))
		if err != nil || resp.StatusCode != 200 {
			e.Fatalf("GET: %v %v", resp, err)
		}
		defer resp.Body.Close()
		if n, err := io.CopyBuffer(io.Discard, resp.Body, make([]byte, 256<<10)); err != nil || n != size {
			e.Fatalf("GET: %d of %d bytes: %v", n, size, err)
		}
	})
	return []Result{
		{Name: "file upload, " + sizeName(size), Unit: "MB/s", Ours: oursUp, OpenSSH: sftpUp, Floor: floorUp, Note: "(ssh: sftp put; floor: cp)"},
		{Name: "file download, " + sizeName(size), Unit: "MB/s", Ours: oursDown, OpenSSH: sftpDown, Floor: floorDown, Note: "(ssh: sftp get)"},
	}
}

// sftpArgs turns ssh's client options into sftp's (-P for the port).
func sftpArgs(o *integration.OpenSSH) []string {
	args := o.ClientArgs()
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		if args[i] == "-p" && i+1 < len(args) {
			out = append(out, "-P", args[i+1])
			i++
			continue
		}
		out = append(out, args[i])
	}
	return out
}

func timed(size int64, f func()) float64 {
	start := time.Now()
	f()
	return MBps(size, time.Since(start))
}
