package files

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/tensorlake/tl-agent/identity"
	"github.com/tensorlake/tl-agent/internal/threads"
)

func filesServer(t *testing.T) *httptest.Server {
	t.Helper()
	u, err := user.Current()
	if err != nil {
		t.Skip("no current user")
	}
	mux := http.NewServeMux()
	owner, err := identity.Lookup(u.Username)
	if err != nil {
		t.Skip("current user not in passwd")
	}
	fs, err := New(Config{Owner: owner}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	fs.Routes(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func do(t *testing.T, method, u string, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, u, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data)
}

func TestWriteReadListDelete(t *testing.T) {
	srv := filesServer(t)
	dir := t.TempDir()
	f := func(p string) string { return srv.URL + "/api/v1/files?path=" + url.QueryEscape(p) }
	if code, body := do(t, "PUT", f(filepath.Join(dir, "a/b/c.txt")), "data"); code != 204 {
		t.Fatalf("PUT: %d %s", code, body)
	}
	if code, body := do(t, "GET", f(filepath.Join(dir, "a/b/c.txt")), ""); code != 200 || body != "data" {
		t.Fatalf("GET: %d %q", code, body)
	}
	_, _ = do(t, "PUT", f(filepath.Join(dir, "a/z.txt")), "z")
	code, body := do(t, "GET", srv.URL+"/api/v1/files/list?path="+url.QueryEscape(filepath.Join(dir, "a")), "")
	var list struct {
		Entries []Entry `json:"entries"`
	}
	if code != 200 || json.Unmarshal([]byte(body), &list) != nil || len(list.Entries) != 2 ||
		list.Entries[0].Name != "b" || list.Entries[0].Size != nil || list.Entries[1].Name != "z.txt" || *list.Entries[1].Size != 1 {
		t.Fatalf("list: %d %s", code, body)
	}
	if code, _ := do(t, "DELETE", f(filepath.Join(dir, "a")), ""); code != 400 {
		t.Fatalf("DELETE non-empty folder: %d", code)
	}
	if code, _ := do(t, "DELETE", f(filepath.Join(dir, "a/z.txt")), ""); code != 204 {
		t.Fatalf("DELETE: %d", code)
	}
	if code, _ := do(t, "DELETE", f(filepath.Join(dir, "a/z.txt")), ""); code != 404 {
		t.Fatalf("DELETE again: %d", code)
	}
	for _, p := range []string{"..", "a/../b", "/x/..", "../"} {
		if code, body := do(t, "GET", f(p), ""); code != 403 || !strings.Contains(body, "PATH_TRAVERSAL") {
			t.Errorf("%q: %d %s", p, code, body)
		}
	}
	// Files that report size 0 but are not empty are sent whole.
	if code, body := do(t, "GET", f("/proc/self/stat"), ""); code != 200 || len(body) == 0 {
		t.Fatalf("/proc/self/stat: %d, %d bytes", code, len(body))
	}
	ents, _ := os.ReadDir(filepath.Join(dir, "a/b"))
	if len(ents) != 1 {
		t.Fatalf("leftovers beside the written file: %v", ents)
	}
}

// Only regular files are read and only folders listed: a FIFO would hold
// the request (and an OS thread of PID 1) until a writer came.
func TestSpecialFilesRefused(t *testing.T) {
	srv := filesServer(t)
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	q := url.QueryEscape
	cases := []struct{ name, url, code string }{
		{"read a FIFO", srv.URL + "/api/v1/files?path=" + q(fifo), "NOT_A_REGULAR_FILE"},
		{"read a device", srv.URL + "/api/v1/files?path=/dev/zero", "NOT_A_REGULAR_FILE"},
		{"list a FIFO", srv.URL + "/api/v1/files/list?path=" + q(fifo), "NOT_A_DIRECTORY"},
		{"read a folder", srv.URL + "/api/v1/files?path=" + q(dir), "IS_DIRECTORY"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// Bounded: before the fix /dev/zero streamed without end and the
			// FIFO never answered.
			client := &http.Client{Timeout: 20 * time.Second}
			resp, err := client.Get(c.url)
			if err != nil {
				t.Fatalf("no answer (the open of a FIFO waits for a writer): %v", err)
			}
			defer resp.Body.Close()
			data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			code, body := resp.StatusCode, string(data)
			if code != 400 || !strings.Contains(body, c.code) {
				t.Fatalf("got %d %s, want 400 %s", code, body, c.code)
			}
		})
	}
}

// TestOwnerIsTheGivenUser: written files and their new folders belong to
// the owner the agent resolved, whatever its ids (root only: chown).
func TestOwnerIsTheGivenUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown")
	}
	home := t.TempDir()
	owner := &identity.User{Name: "ghost", UID: 2345, GID: 2346, Home: home}
	mux := http.NewServeMux()
	fs, err := New(Config{Owner: owner}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	fs.Routes(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	if code, body := do(t, "PUT", srv.URL+"/api/v1/files?path=d/f.txt", "x"); code != 204 {
		t.Fatalf("write: %d %s", code, body)
	}
	for _, p := range []string{"d", "d/f.txt"} {
		fi, err := os.Lstat(filepath.Join(home, p))
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 2345 || st.Gid != 2346 {
			t.Fatalf("%s owned by %d:%d, want the owner's 2345:2346", p, st.Uid, st.Gid)
		}
	}
}

// pipeSink is a response writer whose ReadFrom takes a PipeFiller's
// bytes through a real pipe, as the uplink's stream does.
type pipeSink struct {
	http.ResponseWriter
	fills *int
}

func (p pipeSink) ReadFrom(r io.Reader) (int64, error) {
	pf, ok := r.(interface{ FillPipe(fd, n int) (int, error) })
	if !ok {
		return io.Copy(struct{ io.Writer }{p.ResponseWriter}, r)
	}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return 0, err
	}
	pr := os.NewFile(uintptr(fds[0]), "pipe")
	defer pr.Close()
	defer unix.Close(fds[1])
	var total int64
	buf := make([]byte, 64<<10)
	for {
		k, err := pf.FillPipe(fds[1], len(buf))
		if k > 0 {
			*p.fills++
			if _, rerr := io.ReadFull(pr, buf[:k]); rerr != nil {
				return total, rerr
			}
			if _, werr := p.ResponseWriter.Write(buf[:k]); werr != nil {
				return total, werr
			}
			total += int64(k)
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// A download of a regular file reaches the connection's ReadFrom as a
// PipeFiller (the uplink splices it): whole, and for a Range just the
// range, after net/http's first bytes; the gate's slots are all back.
func TestDownloadOffersPipeFiller(t *testing.T) {
	u, err := user.Current()
	if err != nil {
		t.Skip("no current user")
	}
	owner, err := identity.Lookup(u.Username)
	if err != nil {
		t.Skip("current user not in passwd")
	}
	gate := threads.NewGate(4)
	fs, err := New(Config{Owner: owner, Gate: gate}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	fs.Routes(mux)
	fills := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mux.ServeHTTP(pipeSink{w, &fills}, r)
	}))
	defer srv.Close()
	data := make([]byte, 1<<20+777)
	for i := range data {
		data[i] = byte(i * 7)
	}
	path := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	get := func(rangeHdr string) (int, []byte) {
		req, _ := http.NewRequest("GET", srv.URL+"/api/v1/files?path="+url.QueryEscape(path), nil)
		if rangeHdr != "" {
			req.Header.Set("Range", rangeHdr)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	if code, b := get(""); code != 200 || string(b) != string(data) {
		t.Fatalf("whole file: %d, %d bytes, want 200 and %d equal ones", code, len(b), len(data))
	}
	if fills == 0 {
		t.Fatal("the download was not offered as a PipeFiller")
	}
	fills = 0
	if code, b := get("bytes=1000-600999"); code != 206 || string(b) != string(data[1000:601000]) {
		t.Fatalf("range: %d, %d bytes", code, len(b))
	}
	if fills == 0 {
		t.Fatal("the range was not offered as a PipeFiller")
	}
	if n := gate.InUse(); n != 0 {
		t.Fatalf("%d gate slots still held", n)
	}
}
