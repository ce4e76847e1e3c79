package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// trickle sends a PUT with a body of n bytes, chunk bytes every gap, on a
// raw connection, and returns the response status line and body.
func trickle(t *testing.T, addr string, n, chunk int, gap time.Duration) (int, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(c, "PUT /upload HTTP/1.1\r\nHost: sbx.local\r\nAuthorization: Bearer k\r\nContent-Length: %d\r\n\r\n", n)
	go func() {
		for sent := 0; sent < n; sent += chunk {
			if _, err := c.Write([]byte(strings.Repeat("x", min(chunk, n-sent)))); err != nil {
				return
			}
			time.Sleep(gap)
		}
	}()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestBodyProgress(t *testing.T) {
	cfg := &Config{
		APIKeys:   map[string]string{"k": "n"},
		Sandboxes: map[string]SandboxConfig{"sbx": {Token: tok}},
		Limits:    Limits{BodyMinBytes: 100, BodyWindow: 300 * time.Millisecond},
	}
	p, front := testProxy(t, cfg)
	linkSandbox(t, p, "sbx", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			return
		}
		fmt.Fprintf(w, "got %d", n)
	}))
	addr := strings.TrimPrefix(front.URL, "http://")
	// Steady: 200 bytes per 50 ms for about 2 s, many windows long.
	if code, body := trickle(t, addr, 8000, 200, 50*time.Millisecond); code != 200 || body != "got 8000" {
		t.Fatalf("steady body: %d %s", code, body)
	}
	// Trickling: 1 byte per 50 ms, far below 100 bytes per 300 ms.
	code, body := trickle(t, addr, 8000, 1, 50*time.Millisecond)
	if code != http.StatusRequestTimeout || !strings.Contains(body, "BODY_TOO_SLOW") {
		t.Fatalf("trickling body: %d %s, want 408 BODY_TOO_SLOW", code, body)
	}
}

// TestWriteStallDropsClient: a client that stops reading a response (or
// an upgraded connection) is dropped once one write has waited longer
// than the stall timeout; what it reads afterwards ends early.
func TestWriteStallDropsClient(t *testing.T) {
	cfg := &Config{
		APIKeys:   map[string]string{"k": "n"},
		Sandboxes: map[string]SandboxConfig{"sbx": {Token: tok}},
		Limits:    Limits{WriteStallTimeout: 300 * time.Millisecond},
	}
	p, front := testProxy(t, cfg)
	const total = 256 << 20
	linkSandbox(t, p, "sbx", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var out io.Writer = w
		if r.Header.Get("Upgrade") != "" {
			c, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer c.Close()
			brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: test\r\nConnection: Upgrade\r\n\r\n")
			brw.Flush()
			out = c
		}
		buf := make([]byte, 32<<10)
		n := 0
		for n < total {
			if _, err := out.Write(buf); err != nil {
				break
			}
			n += len(buf)
		}
	}))
	addr := strings.TrimPrefix(front.URL, "http://")
	for _, upgrade := range []bool{false, true} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		extra := ""
		if upgrade {
			extra = "Upgrade: test\r\nConnection: Upgrade\r\n"
		}
		fmt.Fprintf(c, "GET /big HTTP/1.1\r\nHost: sbx.local\r\nAuthorization: Bearer k\r\n%s\r\n", extra)
		time.Sleep(3 * time.Second) // ten stall timeouts without reading
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		n, err := io.Copy(io.Discard, c)
		c.Close()
		var ne net.Error
		if n >= total || errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("upgrade=%v: the stalled client was kept: read %d bytes, %v", upgrade, n, err)
		}
		t.Logf("upgrade=%v: dropped after %d bytes (%v)", upgrade, n, err)
	}
}
