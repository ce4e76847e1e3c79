package main

import (
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

func TestParseArgs(t *testing.T) {
	for _, c := range []struct {
		args      []string
		stopAfter int
		pos, cmd  []string
		shell     string
	}{
		{[]string{"sbx", "--shell", "/bin/sh"}, 0, []string{"sbx"}, nil, "/bin/sh"},
		{[]string{"--shell", "/bin/sh", "sbx"}, 0, []string{"sbx"}, nil, "/bin/sh"},
		{[]string{"sbx", "--", "--shell"}, 0, []string{"sbx", "--shell"}, nil, ""},
		{[]string{"sbx", "--shell", "x", "ls", "-la"}, 1, []string{"sbx"}, []string{"ls", "-la"}, "x"},
		{[]string{"sbx", "--", "ls", "--shell"}, 1, []string{"sbx"}, []string{"ls", "--shell"}, ""},
		{[]string{"--", "sbx", "ls"}, 1, []string{"sbx"}, []string{"ls"}, ""},
	} {
		var cfg config
		fs := newFlags("ssh", &cfg)
		shell := fs.String("shell", "", "")
		pos, cmd, err := parseArgs(fs, c.args, c.stopAfter)
		if err != nil || !reflect.DeepEqual(pos, c.pos) || !reflect.DeepEqual(cmd, c.cmd) || *shell != c.shell {
			t.Errorf("%q: pos %q cmd %q shell %q err %v; want %q %q %q", c.args, pos, cmd, *shell, err, c.pos, c.cmd, c.shell)
		}
	}
}

// TestTarget: the SDK's rule (resolveProxyTarget): localhost keeps the
// URL and sends Host <id>.local; another host drops the path and sends
// X-Tensorlake-Sandbox-Id.
func TestTarget(t *testing.T) {
	for _, c := range []struct{ url, base, host, header string }{
		{"http://127.0.0.1:8080/", "http://127.0.0.1:8080", "s1.local", ""},
		{"http://localhost:9/p", "http://localhost:9/p", "s1.local", ""},
		{"https://proxy.example:8443/x", "https://proxy.example:8443", "", "s1"},
		{"http://[::1]:8080", "http://[::1]:8080", "", "s1"},
	} {
		tg, err := config{proxyURL: c.url, apiKey: "k"}.sandbox("s1")
		if err != nil || tg.base != c.base || tg.host != c.host || tg.header.Get("X-Tensorlake-Sandbox-Id") != c.header ||
			tg.header.Get("Authorization") != "Bearer k" {
			t.Errorf("%s: %+v %v", c.url, tg, err)
		}
	}
	for _, bad := range []string{"ftp://x", "127.0.0.1:8080", "http://"} {
		if _, err := (config{proxyURL: bad}).sandbox("s1"); err == nil {
			t.Errorf("proxy URL %q accepted", bad)
		}
	}
	for _, bad := range []string{"", "a/b", "a b", "x:y", "a\r\nHost: evil"} {
		if _, err := (config{}).sandbox(bad); err == nil {
			t.Errorf("sandbox %q accepted", bad)
		}
	}
}

func TestDetachKey(t *testing.T) {
	for in, want := range map[string]int{"ctrl-]": 0x1d, "CTRL-A": 1, "ctrl-q": 0x11, "ctrl-@": 0, "none": noDetach} {
		if got, err := parseDetachKey(in); err != nil || got != want {
			t.Errorf("%s: %d %v, want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"ctrl-", "ctrl-ab", "x", "ctrl-1", "~."} {
		if _, err := parseDetachKey(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if detachKeyName(0x1d) != "ctrl-]" {
		t.Errorf("name of 0x1d: %s", detachKeyName(0x1d))
	}
}

func TestSplitSandboxPath(t *testing.T) {
	for in, want := range map[string][2]string{
		"sbx:/tmp/f": {"sbx", "/tmp/f"}, "sbx:f": {"sbx", "f"}, "C:/f": {"", "C:/f"},
		"./a:b": {"", "./a:b"}, "plain": {"", "plain"},
	} {
		if s, p := splitSandboxPath(in); s != want[0] || p != want[1] {
			t.Errorf("%s: %q %q", in, s, p)
		}
	}
}

func TestAPIError(t *testing.T) {
	resp := &http.Response{StatusCode: 404, Body: io.NopCloser(strings.NewReader(`{"error":"no such\nsession","code":"SESSION_NOT_FOUND"}`))}
	if got := apiError("attach", resp).Error(); got != "failed to attach (HTTP 404 Not Found): no such session (SESSION_NOT_FOUND)" {
		t.Errorf("got %q", got)
	}
	resp = &http.Response{StatusCode: 401, Body: io.NopCloser(strings.NewReader("nope"))}
	if got := apiError("list sandboxes", resp).Error(); !strings.Contains(got, "HTTP 401 Unauthorized): nope; set --api-key") {
		t.Errorf("got %q", got)
	}
}
