package integration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// listenLoopback serves handle on each connection to a fresh loopback
// port, which the sandbox reaches as 127.0.0.1 (it shares the network).
func listenLoopback(t *testing.T, handle func(net.Conn)) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

func TestTunnelErrors(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// A port nobody listens on: find one by listening and closing.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := fmt.Sprint(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	for _, c := range []struct {
		port   string
		status int
		code   string
	}{
		{"", 400, "INVALID_PORT"},
		{"0", 400, "INVALID_PORT"},
		{"65536", 400, "INVALID_PORT"},
		{"-1", 400, "INVALID_PORT"},
		{"http", 400, "INVALID_PORT"},
		{closed, 502, "PORT_UNREACHABLE"},
	} {
		_, resp, err := s.DialTunnel(ctx, c.port)
		if err == nil || resp == nil {
			t.Fatalf("port %q: dial succeeded (%v)", c.port, err)
		}
		var e map[string]string
		data, _ := io.ReadAll(resp.Body)
		if json.Unmarshal(data, &e) != nil || resp.StatusCode != c.status || e["code"] != c.code {
			t.Fatalf("port %q: %d %s, want %d %s", c.port, resp.StatusCode, data, c.status, c.code)
		}
	}

	// Text messages are refused with 1003, and the target connection ends.
	gone := make(chan struct{})
	port := listenLoopback(t, func(c net.Conn) {
		_, _ = io.Copy(io.Discard, c)
		close(gone)
	})
	ws, _, err := s.DialTunnel(ctx, fmt.Sprint(port))
	if err != nil {
		t.Fatal(err)
	}
	if err := ws.Write(ctx, websocket.MessageText, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	_, _, err = ws.Read(ctx)
	if websocket.CloseStatus(err) != websocket.StatusUnsupportedData {
		t.Fatalf("after a text message: %v, want close 1003", err)
	}
	select {
	case <-gone:
	case <-time.After(10 * time.Second):
		t.Fatal("target connection not closed after the refusal")
	}
}

// TestTunnelHTTP carries HTTP/1.1 with keep-alive through one tunnel.
func TestTunnelHTTP(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %d", r.Method, r.URL.Path, len(body))
	})}
	go srv.Serve(ln)
	defer srv.Close()
	port := fmt.Sprint(ln.Addr().(*net.TCPAddr).Port)
	dials := 0
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			dials++
			ws, _, err := s.DialTunnel(ctx, port)
			if err != nil {
				return nil, err
			}
			return websocket.NetConn(context.Background(), ws, websocket.MessageBinary), nil
		},
	}}
	for i := 0; i < 20; i++ {
		body := strings.Repeat("x", i*1000)
		resp, err := client.Post(fmt.Sprintf("http://tunnel/p%d", i), "text/plain", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := fmt.Sprintf("POST /p%d %d", i, len(body)); string(got) != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
	if dials != 1 {
		t.Fatalf("%d tunnels for 20 keep-alive requests", dials)
	}
}

// TestTunnelGiB moves 1 GiB each way with checksums, and uses the
// half-close: the upload ends with a zero-length message, after which the
// server still answers with its checksum.
func TestTunnelGiB(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{})
	const size = 1 << 30
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// Upload: the server hashes until EOF, then answers with the hash.
	port := listenLoopback(t, func(c net.Conn) {
		defer c.Close()
		h := sha256.New()
		_, _ = io.Copy(h, c)
		_, _ = io.WriteString(c, hex.EncodeToString(h.Sum(nil)))
	})
	ws, _, err := s.DialTunnel(ctx, fmt.Sprint(port))
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	src := io.TeeReader(newSeeded(2, size), h)
	buf := make([]byte, 64<<10)
	start := time.Now()
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if werr := ws.Write(ctx, websocket.MessageBinary, buf[:n]); werr != nil {
				t.Fatalf("write: %v", werr)
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
	}
	if err := ws.Write(ctx, websocket.MessageBinary, nil); err != nil { // half-close
		t.Fatal(err)
	}
	var answer []byte
	for {
		_, data, err := ws.Read(ctx)
		if err != nil {
			if websocket.CloseStatus(err) != websocket.StatusNormalClosure {
				t.Fatalf("upload answer: %v", err)
			}
			break
		}
		answer = append(answer, data...)
	}
	up := time.Since(start)
	if want := hex.EncodeToString(h.Sum(nil)); string(answer) != want {
		t.Fatalf("server hashed %q, want %q", answer, want)
	}

	// Download: the server sends 1 GiB and closes.
	port = listenLoopback(t, func(c net.Conn) {
		defer c.Close()
		_, _ = io.Copy(c, newSeeded(3, size))
	})
	want := sha256.New()
	_, _ = io.Copy(want, newSeeded(3, size))
	ws, _, err = s.DialTunnel(ctx, fmt.Sprint(port))
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	nc := websocket.NetConn(ctx, ws, websocket.MessageBinary)
	got := sha256.New()
	n, err := io.Copy(got, nc)
	down := time.Since(start)
	if err != nil || n != size {
		t.Fatalf("download: %d bytes, %v", n, err)
	}
	if hex.EncodeToString(got.Sum(nil)) != hex.EncodeToString(want.Sum(nil)) {
		t.Fatal("download checksum mismatch")
	}
	t.Logf("1 GiB through a tunnel: up %v (%.0f MB/s), down %v (%.0f MB/s)",
		up, float64(size)/up.Seconds()/1e6, down, float64(size)/down.Seconds()/1e6)
}
