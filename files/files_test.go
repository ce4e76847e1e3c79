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
	"testing"

	"github.com/rs/zerolog"
)

func filesServer(t *testing.T) *httptest.Server {
	t.Helper()
	u, err := user.Current()
	if err != nil {
		t.Skip("no current user")
	}
	mux := http.NewServeMux()
	New(Config{User: u.Username}, zerolog.Nop()).Routes(mux)
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
