package pty

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/internal/leakcheck"
	"github.com/tensorlake/tl-agent/supervisor"
)

// These tests run real commands on real PTYs in process (under -race), as
// the user running the test. integration/pty_test.go covers the same
// through tl-proxy with the agent as PID 1.

type rig struct {
	t   *testing.T
	m   *Manager
	srv *httptest.Server
}

func newRig(t *testing.T, cfg Config) *rig {
	t.Helper()
	log := zerolog.Nop()
	reaper := supervisor.NewReaper(log, false)
	stop := make(chan struct{})
	go reaper.Run(stop)
	m, err := NewManager(cfg, log, reaper)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	m.Routes(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		srv.Close()
		m.Close()
		close(stop)
	})
	return &rig{t: t, m: m, srv: srv}
}

func (r *rig) create(body map[string]any) (id, token string) {
	r.t.Helper()
	if _, ok := body["user"]; !ok {
		body["user"] = strconv.Itoa(os.Getuid())
	}
	data, _ := json.Marshal(body)
	resp, err := http.Post(r.srv.URL+"/api/v1/pty", "application/json", bytes.NewReader(data))
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]string
	_ = json.NewDecoder(resp.Body).Decode(&out)
	if resp.StatusCode != http.StatusCreated {
		r.t.Fatalf("create: %d %v", resp.StatusCode, out)
	}
	return out["session_id"], out["token"]
}

func (r *rig) dial(id, token string) *websocket.Conn {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	url := strings.Replace(r.srv.URL, "http", "ws", 1) + "/api/v1/pty/" + id + "/ws?token=" + token
	c, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		r.t.Fatalf("dial: %v", err)
	}
	c.SetReadLimit(1 << 20)
	r.t.Cleanup(func() { c.CloseNow() })
	return c
}

// readUntilClose collects output until the close and returns it, the exit
// code of the 03 frame (-1 without one) and the close error.
func readUntilClose(t *testing.T, c *websocket.Conn) (string, int, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out strings.Builder
	code := -1
	for {
		_, msg, err := c.Read(ctx)
		if err != nil {
			return out.String(), code, err
		}
		switch msg[0] {
		case opData:
			if code != -1 {
				t.Fatalf("output after the exit frame")
			}
			out.Write(msg[1:])
		case opExit:
			code = int(int32(uint32(msg[1])<<24 | uint32(msg[2])<<16 | uint32(msg[3])<<8 | uint32(msg[4])))
		}
	}
}

func TestEchoExitInProcess(t *testing.T) {
	r := newRig(t, Config{})
	id, tok := r.create(map[string]any{"command": "sh", "args": []string{"-c", "echo hi; exit 3"}})
	c := r.dial(id, tok)
	_ = c.Write(context.Background(), websocket.MessageBinary, []byte{opReady})
	out, code, err := readUntilClose(t, c)
	if !strings.Contains(out, "hi") || code != 3 {
		t.Fatalf("output %q exit %d", out, code)
	}
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.StatusNormalClosure || ce.Reason != "exit:3" {
		t.Fatalf("close %v", err)
	}
	if st := r.m.Stats(); st.Created != 1 || st.Ended[EndExit] != 1 {
		t.Fatalf("stats %+v: want one session created, ended by its exit", st)
	}
}

func TestReattachReplayAndKillInProcess(t *testing.T) {
	r := newRig(t, Config{KillGrace: time.Second})
	id, tok := r.create(map[string]any{"command": "sh", "args": []string{"-c", "echo before; read x; echo got-$x; sleep 100"}})
	c1 := r.dial(id, tok)
	_ = c1.Write(context.Background(), websocket.MessageBinary, []byte{opReady})
	_ = c1.Write(context.Background(), websocket.MessageBinary, []byte("\x00one\n"))
	c1.Close(websocket.StatusNormalClosure, "bye")
	// Output produced while detached is replayed to the next client.
	c2 := r.dial(id, tok)
	_ = c2.Write(context.Background(), websocket.MessageBinary, []byte{opReady})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var seen string
	for !strings.Contains(seen, "got-one") {
		_, msg, err := c2.Read(ctx)
		if err != nil {
			t.Fatalf("read: %v (seen %q)", err, seen)
		}
		seen += string(msg[1:])
	}
	if !strings.Contains(seen, "before") {
		t.Fatalf("replay lacks output from before: %q", seen)
	}
	req, _ := http.NewRequest("DELETE", r.srv.URL+"/api/v1/pty/"+id, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("delete: %v %v", resp, err)
	}
	_, code, err := readUntilClose(t, c2)
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.StatusGoingAway || ce.Reason != "session terminated" || code != -1 {
		t.Fatalf("close %v exit %d", err, code)
	}
	if st := r.m.Stats(); st.Ended[EndDeleted] != 1 || st.Ended[EndExit] != 0 {
		t.Fatalf("stats %+v: want the session ended as deleted", st)
	}
}

// TestUnansweredPingDropsClient: a client that never answers pings is
// dropped; the session lives on.
func TestUnansweredPingDropsClient(t *testing.T) {
	r := newRig(t, Config{PingInterval: 100 * time.Millisecond, PongTimeout: 100 * time.Millisecond})
	id, tok := r.create(map[string]any{"command": "cat"})
	conn, err := net.Dial("tcp", strings.TrimPrefix(r.srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /api/v1/pty/%s/ws HTTP/1.1\r\nHost: x\r\nX-PTY-Token: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", id, tok)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	// Read (and ignore) whatever comes, answering nothing, until the
	// server closes the connection.
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.Copy(io.Discard, br); err != nil {
		t.Fatalf("connection not closed by the server: %v", err)
	}
	s, err := r.m.get(id)
	if err != nil || !s.info().IsAlive {
		t.Fatalf("session gone with its client: %v", err)
	}
	// Detaching follows the close of the connection.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		s.mu.Lock()
		n := len(s.clients)
		s.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d clients still attached", n)
		}
	}
}

// TestCloseLeaksNothing: after Close, the file descriptors and goroutines
// of sessions and clients are gone.
func TestCloseLeaksNothing(t *testing.T) {
	base := leakcheck.Take(t)
	func() {
		log := zerolog.Nop()
		reaper := supervisor.NewReaper(log, false)
		defer reaper.Close()
		go reaper.Run(nil)
		m, err := NewManager(Config{KillGrace: time.Second}, log, reaper)
		if err != nil {
			t.Fatal(err)
		}
		mux := http.NewServeMux()
		m.Routes(mux)
		srv := httptest.NewServer(mux)
		r := &rig{t: t, m: m, srv: srv}
		var conns []*websocket.Conn
		for i := 0; i < 3; i++ {
			id, tok := r.create(map[string]any{"command": "sh", "args": []string{"-c", "sleep 100 & cat"}})
			c := r.dial(id, tok)
			conns = append(conns, c)
			_ = c.Write(context.Background(), websocket.MessageBinary, []byte{opReady})
		}
		id, tok := r.create(map[string]any{"command": "echo", "args": []string{"done"}})
		c := r.dial(id, tok)
		_ = c.Write(context.Background(), websocket.MessageBinary, []byte{opReady})
		readUntilClose(t, c)
		m.Close()
		srv.Close()
		for _, c := range conns {
			c.CloseNow() // the test's own ends
		}
		c.CloseNow()
		http.DefaultClient.CloseIdleConnections()
	}()
	base.Check(t)
}
