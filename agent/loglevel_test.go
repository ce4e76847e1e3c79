package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/tensorlake/tl-agent/internal/logx"
)

// TestControlLogLevel: the control socket reads and sets the level the
// agent's loggers consult; an unknown level is refused with a reason and
// changes nothing.
func TestControlLogLevel(t *testing.T) {
	var buf syncBuf
	log, level, err := logx.NewLeveled(&buf, "info")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "agent.sock")
	a := New(Config{ControlSocket: path, Level: level}, log, "test", Parts{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.serveControl(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	waitSocket(t, path)
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}}
	call := func(method, body string) (int, LogLevel, string) {
		req, _ := http.NewRequest(method, "http://agent/log-level", strings.NewReader(body))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s /log-level: %v", method, err)
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		var lv LogLevel
		_ = json.Unmarshal(data, &lv)
		return resp.StatusCode, lv, string(data)
	}
	if code, lv, raw := call("GET", ""); code != 200 || lv.Level != "info" {
		t.Fatalf("GET: %d %s, want info", code, raw)
	}
	a.log.Debug().Msg("before-debug")
	if code, lv, raw := call("PUT", `{"level":"debug"}`); code != 200 || lv.Level != "debug" || lv.Previous != "info" {
		t.Fatalf("PUT debug: %d %s", code, raw)
	}
	a.log.Debug().Msg("after-debug")
	code, _, raw := call("PUT", `{"level":"chatty"}`)
	if code != 400 || !strings.Contains(raw, "INVALID_LEVEL") || !strings.Contains(raw, "want debug, info, warn or error") {
		t.Fatalf("PUT chatty: %d %s, want 400 INVALID_LEVEL with the accepted levels", code, raw)
	}
	if _, lv, _ := call("GET", ""); lv.Level != "debug" {
		t.Fatalf("a refused level changed it to %s", lv.Level)
	}
	out := buf.String()
	if strings.Contains(out, "before-debug") || !strings.Contains(out, "after-debug") || !strings.Contains(out, "log level changed") {
		t.Fatalf("the level did not apply at once:\n%s", out)
	}
}

// syncBuf is a log sink safe for the control server's goroutines.
type syncBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
