package integration

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func filePath(p string) string { return "/api/v1/files?path=" + url.QueryEscape(p) }

// sandboxUID is tl-user's uid inside the sandbox.
func sandboxUID(t *testing.T, s *System) int {
	t.Helper()
	out, err := s.Exec("id", "-u", "tl-user")
	if err != nil {
		t.Fatalf("id -u tl-user: %v %s", err, out)
	}
	uid, _ := strconv.Atoi(strings.TrimSpace(out))
	return uid
}

func ownerOf(t *testing.T, path string) int {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	return int(fi.Sys().(*syscall.Stat_t).Uid)
}

func TestFiles(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{})
	ensureUser(t, s)
	uid := sandboxUID(t, s)

	// Write with parents created, relative to tl-user's home.
	s.JSON("PUT", filePath("proj/src/hello.txt"), "hello world\n", 204, nil)
	for _, p := range []string{"/home/tl-user/proj", "/home/tl-user/proj/src", "/home/tl-user/proj/src/hello.txt"} {
		if got := ownerOf(t, s.SandboxPath(p)); got != uid {
			t.Fatalf("%s owned by %d, want tl-user (%d)", p, got, uid)
		}
	}
	data, err := os.ReadFile(s.SandboxPath("/home/tl-user/proj/src/hello.txt"))
	if err != nil || string(data) != "hello world\n" {
		t.Fatalf("written file %q %v", data, err)
	}
	// Read back, relative and absolute.
	for _, p := range []string{"proj/src/hello.txt", "/home/tl-user/proj/src/hello.txt"} {
		resp := s.Do("GET", filePath(p), nil)
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(body) != "hello world\n" || resp.Header.Get("Content-Type") != "application/octet-stream" {
			t.Fatalf("GET %s: %d %q %s", p, resp.StatusCode, body, resp.Header.Get("Content-Type"))
		}
	}
	// Overwrite keeps it a file of tl-user's; an empty body is a valid file.
	s.JSON("PUT", filePath("proj/src/hello.txt"), "v2", 204, nil)
	s.JSON("PUT", filePath("/tmp/empty"), "", 204, nil)
	if fi, err := os.Stat(s.SandboxPath("/tmp/empty")); err != nil || fi.Size() != 0 {
		t.Fatalf("empty file: %v %v", fi, err)
	}

	// Listing: folders first, then by name; size null for folders.
	s.JSON("PUT", filePath("proj/b.txt"), "bb", 204, nil)
	s.JSON("PUT", filePath("proj/a.txt"), "a", 204, nil)
	s.JSON("PUT", filePath("proj/zdir/x"), "x", 204, nil)
	var list struct {
		Path    string `json:"path"`
		Entries []struct {
			Name       string `json:"name"`
			IsDir      bool   `json:"is_dir"`
			Size       *int64 `json:"size"`
			ModifiedAt int64  `json:"modified_at"`
		} `json:"entries"`
	}
	s.JSON("GET", "/api/v1/files/list?path=proj", nil, 200, &list)
	var names []string
	for _, e := range list.Entries {
		names = append(names, fmt.Sprintf("%s:%v:%v", e.Name, e.IsDir, e.Size != nil))
		if now := time.Now().UnixMilli(); e.ModifiedAt < now-60000 || e.ModifiedAt > now+1000 {
			t.Fatalf("modified_at %d is not ms since epoch", e.ModifiedAt)
		}
	}
	if list.Path != "/home/tl-user/proj" || strings.Join(names, " ") != "src:true:false zdir:true:false a.txt:false:true b.txt:false:true" {
		t.Fatalf("list %s: %v", list.Path, names)
	}
	if *list.Entries[3].Size != 2 {
		t.Fatalf("b.txt size %d", *list.Entries[3].Size)
	}

	// Delete.
	s.JSON("DELETE", filePath("proj/a.txt"), nil, 204, nil)
	if _, err := os.Stat(s.SandboxPath("/home/tl-user/proj/a.txt")); !os.IsNotExist(err) {
		t.Fatalf("deleted file still there: %v", err)
	}

	cases := []struct {
		name, method, path string
		body               any
		status             int
		code               string
	}{
		{"read folder", "GET", filePath("proj"), nil, 400, "IS_DIRECTORY"},
		{"read missing", "GET", filePath("proj/nope"), nil, 404, "NOT_FOUND"},
		{"read traversal", "GET", filePath("../../etc/passwd"), nil, 403, "PATH_TRAVERSAL"},
		{"read traversal absolute", "GET", filePath("/home/tl-user/../../etc/shadow"), nil, 403, "PATH_TRAVERSAL"},
		{"write traversal", "PUT", filePath("a/../../x"), "x", 403, "PATH_TRAVERSAL"},
		{"delete traversal", "DELETE", filePath(".."), nil, 403, "PATH_TRAVERSAL"},
		{"list traversal", "GET", "/api/v1/files/list?path=" + url.QueryEscape("proj/.."), nil, 403, "PATH_TRAVERSAL"},
		{"no path", "GET", "/api/v1/files", nil, 400, "INVALID_REQUEST"},
		{"write over folder", "PUT", filePath("proj/src"), "x", 400, "IS_DIRECTORY"},
		{"write under a file", "PUT", filePath("proj/b.txt/x"), "x", 400, "NOT_A_DIRECTORY"},
		{"delete missing", "DELETE", filePath("proj/a.txt"), nil, 404, "NOT_FOUND"},
		{"list a file", "GET", "/api/v1/files/list?path=proj/b.txt", nil, 400, "NOT_A_DIRECTORY"},
		{"list missing", "GET", "/api/v1/files/list?path=nope", nil, 404, "NOT_FOUND"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s.WantError(t, c.method, c.path, c.body, c.status, c.code)
		})
	}
	// A name with dots that is not ".." is fine.
	s.JSON("PUT", filePath("proj/a..b"), "dots", 204, nil)
}

// TestFileWriteIsAtomic: while an upload is half sent, readers see the old
// file whole; afterwards, the new one whole.
func TestFileWriteIsAtomic(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{})
	ensureUser(t, s)
	old := bytes.Repeat([]byte("o"), 1<<20)
	s.JSON("PUT", filePath("atomic.bin"), old, 204, nil)
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	go func() {
		resp := s.Do("PUT", filePath("atomic.bin"), pr)
		done <- resp.StatusCode
	}()
	if _, err := pw.Write(bytes.Repeat([]byte("n"), 600<<10)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	resp := s.Do("GET", filePath("atomic.bin"), nil)
	got, _ := io.ReadAll(resp.Body)
	if !bytes.Equal(got, old) {
		t.Fatalf("mid-upload read: %d bytes, first %q; want the old file whole", len(got), got[:1])
	}
	_, _ = pw.Write(bytes.Repeat([]byte("n"), 424<<10))
	pw.Close()
	if code := <-done; code != 204 {
		t.Fatalf("upload: %d", code)
	}
	resp = s.Do("GET", filePath("atomic.bin"), nil)
	got, _ = io.ReadAll(resp.Body)
	if !bytes.Equal(got, bytes.Repeat([]byte("n"), 1<<20)) {
		t.Fatalf("after upload: %d bytes", len(got))
	}
	// No temporary file is left behind.
	ents, _ := os.ReadDir(s.SandboxPath("/home/tl-user"))
	for _, e := range ents {
		if strings.Contains(e.Name(), "tl-upload") {
			t.Fatalf("temporary file left: %s", e.Name())
		}
	}
}

// seededReader yields n deterministic pseudo-random bytes.
type seededReader struct {
	rng  *rand.ChaCha8
	left int64
}

func newSeeded(seed byte, n int64) *seededReader {
	var s [32]byte
	s[0] = seed
	return &seededReader{rng: rand.NewChaCha8(s), left: n}
}

func (r *seededReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, _ := r.rng.Read(p)
	r.left -= int64(n)
	return n, nil
}

// TestFileOneGiB writes 1 GiB and reads it back through the proxy; the
// checksums match and the agent's memory stays flat.
func TestFileOneGiB(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{})
	ensureUser(t, s)
	const size = 1 << 30
	pid := s.AgentPid()
	before := vmKB(t, pid, "VmRSS")
	h := sha256.New()
	start := time.Now()
	s.JSON("PUT", filePath("big.bin"), io.TeeReader(newSeeded(1, size), h), 204, nil)
	up := time.Since(start)
	want := hex.EncodeToString(h.Sum(nil))
	afterUp := vmKB(t, pid, "VmHWM")

	start = time.Now()
	resp := s.Do("GET", filePath("big.bin"), nil)
	h2 := sha256.New()
	n, err := io.Copy(h2, resp.Body)
	down := time.Since(start)
	if err != nil || n != size {
		t.Fatalf("download: %d bytes, %v", n, err)
	}
	if got := hex.EncodeToString(h2.Sum(nil)); got != want {
		t.Fatalf("checksum %s, want %s", got, want)
	}
	peak := vmKB(t, pid, "VmHWM")
	t.Logf("1 GiB up %v (%.0f MB/s), down %v (%.0f MB/s); agent RSS before %d KiB, peak after upload %d KiB, peak after download %d KiB",
		up, float64(size)/up.Seconds()/1e6, down, float64(size)/down.Seconds()/1e6, before, afterUp, peak)
	if peak-before > 128<<10 {
		t.Fatalf("agent peak RSS grew by %d KiB moving 1 GiB: not streaming", peak-before)
	}
	_ = os.Remove(s.SandboxPath("/home/tl-user/big.bin"))
}
