package integration

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
)

// headerOf returns the value of header name in curl's dumped headers (the
// last response's, after any 1xx).
func headerOf(r curlResult, name string) string {
	v := ""
	for _, l := range strings.Split(r.header, "\r\n") {
		if k, val, ok := strings.Cut(l, ":"); ok && strings.EqualFold(k, name) {
			v = strings.TrimSpace(val)
		}
	}
	return v
}

// TestFileRanges: GET /api/v1/files through the real proxy and agent, with
// curl: a single range is 206 with Content-Range, several are
// multipart/byteranges, an unsatisfiable one and too many are 416 with the
// API's JSON error, If-None-Match and If-Modified-Since answer 304, and a
// /proc file (size 0) still streams whole, ignoring Range.
func TestFileRanges(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{})
	content := strings.Repeat("0123456789", 100) // 1000 bytes
	if resp := s.Do("PUT", filePath("r.txt"), content); resp.StatusCode != 204 {
		t.Fatalf("PUT: %d", resp.StatusCode)
	}
	url := s.BaseURL() + filePath("r.txt")
	api := []string{"-H", "Host: " + s.SandboxID + ".local", "-H", "Authorization: Bearer " + s.APIKey}
	get := func(t *testing.T, extra ...string) curlResult {
		return curl(t, append(append(append([]string{}, api...), extra...), url)...)
	}
	full := get(t)
	etag, lastMod := headerOf(full, "ETag"), headerOf(full, "Last-Modified")
	if full.status != 200 || full.body != content || etag == "" || lastMod == "" || headerOf(full, "Accept-Ranges") != "bytes" {
		t.Fatalf("plain GET: %d, %d bytes, ETag %q, Last-Modified %q\n%s", full.status, len(full.body), etag, lastMod, full.header)
	}
	rule(t, s, "one range is 206 with Content-Range", func(t *testing.T) {
		r := get(t, "-H", "Range: bytes=10-19")
		if r.status != 206 || r.body != content[10:20] || headerOf(r, "Content-Range") != "bytes 10-19/1000" {
			t.Fatalf("%d %q %s", r.status, r.body, r.header)
		}
		r = get(t, "-H", "Range: bytes=-5") // a suffix: the last 5 bytes
		if r.status != 206 || r.body != content[995:] {
			t.Fatalf("suffix: %d %q", r.status, r.body)
		}
	})
	rule(t, s, "a resumed download (curl -C) gets the rest", func(t *testing.T) {
		r := get(t, "-C", "600")
		if r.status != 206 || r.body != content[600:] {
			t.Fatalf("%d, %d bytes", r.status, len(r.body))
		}
	})
	rule(t, s, "several ranges are multipart/byteranges", func(t *testing.T) {
		r := get(t, "-H", "Range: bytes=0-1,100-102")
		if r.status != 206 || !strings.HasPrefix(headerOf(r, "Content-Type"), "multipart/byteranges") ||
			!strings.Contains(r.body, "Content-Range: bytes 0-1/1000") || !strings.Contains(r.body, "Content-Range: bytes 100-102/1000") {
			t.Fatalf("%d %s\n%s", r.status, r.header, r.body)
		}
	})
	wantJSON := func(t *testing.T, r curlResult, status int, words string) {
		t.Helper()
		var e struct{ Error, Code string }
		if err := json.Unmarshal([]byte(r.body), &e); err != nil || r.status != status || !strings.Contains(e.Error, words) {
			t.Fatalf("%d %q; want %d with %q", r.status, r.body, status, words)
		}
	}
	rule(t, s, "an unsatisfiable range is 416 with a JSON error", func(t *testing.T) {
		r := get(t, "-H", "Range: bytes=5000-6000")
		wantJSON(t, r, 416, "the file has 1000 bytes")
		if cr := headerOf(r, "Content-Range"); cr != "bytes */1000" {
			t.Errorf("Content-Range %q, want bytes */1000", cr)
		}
	})
	rule(t, s, "more than 16 ranges are refused", func(t *testing.T) {
		var rs []string
		for i := 0; i < 17; i++ {
			rs = append(rs, fmt.Sprintf("%d-%d", i*10, i*10+1))
		}
		wantJSON(t, get(t, "-H", "Range: bytes="+strings.Join(rs, ",")), 416, "at most 16 ranges")
	})
	rule(t, s, "If-None-Match with the ETag is 304", func(t *testing.T) {
		r := get(t, "-H", "If-None-Match: "+etag)
		if r.status != 304 || r.body != "" {
			t.Fatalf("%d %q", r.status, r.body)
		}
		if r := get(t, "-H", `If-None-Match: "other"`); r.status != 200 || r.body != content {
			t.Fatalf("another ETag: %d", r.status)
		}
	})
	rule(t, s, "If-Modified-Since the Last-Modified is 304", func(t *testing.T) {
		if r := get(t, "-H", "If-Modified-Since: "+lastMod); r.status != 304 {
			t.Fatalf("%d", r.status)
		}
		if r := get(t, "-H", "If-Modified-Since: Mon, 01 Jan 2001 00:00:00 GMT"); r.status != 200 || r.body != content {
			t.Fatalf("older date: %d", r.status)
		}
	})
	rule(t, s, "If-Range with a stale ETag gets the whole file", func(t *testing.T) {
		r := get(t, "-H", "Range: bytes=0-9", "-H", `If-Range: "stale"`)
		if r.status != 200 || r.body != content {
			t.Fatalf("%d, %d bytes", r.status, len(r.body))
		}
	})
	rule(t, s, "a rewrite changes the ETag", func(t *testing.T) {
		if resp := s.Do("PUT", filePath("r.txt"), content+"!"); resp.StatusCode != 204 {
			t.Fatalf("PUT: %d", resp.StatusCode)
		}
		r := get(t, "-H", "If-None-Match: "+etag)
		if r.status != 200 || r.body != content+"!" || headerOf(r, "ETag") == etag {
			t.Fatalf("%d, ETag %q (was %q)", r.status, headerOf(r, "ETag"), etag)
		}
	})
	rule(t, s, "a /proc file (size 0) streams whole, Range ignored", func(t *testing.T) {
		r := curl(t, append(append([]string{}, api...), "-H", "Range: bytes=0-3", s.BaseURL()+filePath("/proc/self/status"))...)
		if r.status != 200 || !regexp.MustCompile(`^Name:`).MatchString(r.body) || !strings.Contains(r.body, "Pid:") ||
			headerOf(r, "ETag") != "" || headerOf(r, "Accept-Ranges") != "" {
			t.Fatalf("%d %s\n%.200s", r.status, r.header, r.body)
		}
	})
}
