package integration

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// PTY sessions end to end: a Go WebSocket client through tl-proxy (Host
// <sandbox>.local, Bearer auth), the agent as PID 1 of a sandbox.

type ptyCreated struct {
	SessionID string `json:"session_id"`
	Token     string `json:"token"`
}

type ptyInfo struct {
	SessionID string   `json:"session_id"`
	PID       int      `json:"pid"`
	Command   string   `json:"command"`
	Args      []string `json:"args"`
	Rows      int      `json:"rows"`
	Cols      int      `json:"cols"`
	CreatedAt int64    `json:"created_at"`
	EndedAt   *int64   `json:"ended_at"`
	ExitCode  *int     `json:"exit_code"`
	IsAlive   bool     `json:"is_alive"`
}

// ptySystem starts a sandbox with tl-user present. Until the agent
// provisions the user itself, the test adds it inside the sandbox's
// throwaway overlay (never this machine's /etc).
func ptySystem(t *testing.T, opts Options) *System {
	t.Helper()
	RequireRoot(t)
	s := Start(t, opts)
	if _, err := s.Exec("id", "-u", "tl-user"); err != nil {
		if out, err := s.Exec("useradd", "-m", "-s", "/bin/bash", "tl-user"); err != nil {
			t.Fatalf("useradd in sandbox: %v: %s", err, out)
		}
	}
	return s
}

func ptyCreate(t *testing.T, s *System, body map[string]any) ptyCreated {
	t.Helper()
	var out ptyCreated
	s.JSON("POST", "/api/v1/pty", body, http.StatusCreated, &out)
	if len(out.SessionID) != 21 || len(out.Token) != 64 {
		t.Fatalf("create answered %+v", out)
	}
	return out
}

func ptyGet(t *testing.T, s *System, id string) ptyInfo {
	t.Helper()
	var in ptyInfo
	s.JSON("GET", "/api/v1/pty/"+id, nil, http.StatusOK, &in)
	return in
}

// waitEnded polls until the session is no longer alive.
func waitEnded(t *testing.T, s *System, id string, d time.Duration) ptyInfo {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		in := ptyGet(t, s, id)
		if !in.IsAlive {
			return in
		}
		if time.Now().After(deadline) {
			t.Fatalf("session %s still alive after %v", id, d)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ptyConn is a WebSocket client whose reader goroutine queues messages, so
// a test can wait with a timeout without closing the connection.
type ptyConn struct {
	t    *testing.T
	c    *websocket.Conn
	msgs chan []byte
	err  error // set before msgs is closed
	out  bytes.Buffer
	exit int // from the 03 frame, -1 until then
}

func ptyDialRaw(s *System, id string, hdr http.Header, query string) (*websocket.Conn, *http.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	h := http.Header{"Authorization": {"Bearer " + s.APIKey}}
	for k, v := range hdr {
		h[k] = v
	}
	return websocket.Dial(ctx, s.WSURL()+"/api/v1/pty/"+id+"/ws"+query, &websocket.DialOptions{
		HTTPHeader: h, Host: s.SandboxID + ".local",
	})
}

func ptyDial(t *testing.T, s *System, p ptyCreated) *ptyConn {
	t.Helper()
	c, _, err := ptyDialRaw(s, p.SessionID, http.Header{"X-PTY-Token": {p.Token}}, "")
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	c.SetReadLimit(1 << 20)
	pc := &ptyConn{t: t, c: c, msgs: make(chan []byte, 1024), exit: -1}
	go func() {
		for {
			_, msg, err := c.Read(context.Background())
			if err != nil {
				pc.err = err
				close(pc.msgs)
				return
			}
			pc.msgs <- msg
		}
	}()
	t.Cleanup(func() { c.CloseNow() })
	return pc
}

func (p *ptyConn) send(b []byte) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.c.Write(ctx, websocket.MessageBinary, b); err != nil {
		p.t.Fatalf("send: %v", err)
	}
}

func (p *ptyConn) ready()          { p.send([]byte{0x02}) }
func (p *ptyConn) input(s string)  { p.send(append([]byte{0x00}, s...)) }
func (p *ptyConn) resize(c, r int) { p.send(binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16([]byte{0x01}, uint16(c)), uint16(r))) }

// take handles one message; false when the connection has ended.
func (p *ptyConn) take(d time.Duration) (bool, bool) {
	select {
	case msg, ok := <-p.msgs:
		if !ok {
			return false, false
		}
		switch {
		case len(msg) == 0:
			p.t.Fatalf("empty message from the agent")
		case msg[0] == 0x00:
			if p.exit != -1 {
				p.t.Fatalf("output after the exit frame")
			}
			p.out.Write(msg[1:])
		case msg[0] == 0x03 && len(msg) == 5:
			p.exit = int(int32(binary.BigEndian.Uint32(msg[1:])))
		default:
			p.t.Fatalf("unexpected message %x", msg)
		}
		return true, true
	case <-time.After(d):
		return true, false
	}
}

// waitFor reads until the output contains want.
func (p *ptyConn) waitFor(want string, d time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(d)
	for !strings.Contains(p.out.String(), want) {
		open, _ := p.take(time.Until(deadline))
		if !open || time.Now().After(deadline) {
			p.t.Fatalf("no %q in output within %v (err %v): %q", want, d, p.err, tailStr(p.out.String(), 400))
		}
	}
}

// waitClose reads until the connection ends and returns the close error.
func (p *ptyConn) waitClose(d time.Duration) websocket.CloseError {
	p.t.Helper()
	deadline := time.Now().Add(d)
	for {
		open, _ := p.take(time.Until(deadline))
		if !open {
			var ce websocket.CloseError
			if !errors.As(p.err, &ce) {
				p.t.Fatalf("connection ended without a close frame: %v", p.err)
			}
			return ce
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("connection not closed within %v", d)
		}
	}
}

func tailStr(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func TestPTYShellSession(t *testing.T) {
	s := ptySystem(t, Options{})
	p := ptyCreate(t, s, map[string]any{"command": "/bin/sh", "rows": 30, "cols": 100})
	c := ptyDial(t, s, p)
	c.input("echo marker-$((6*7))\n")
	// Nothing is sent before READY, though the shell has printed.
	if _, got := c.take(500 * time.Millisecond); got {
		t.Fatalf("agent sent %q before READY", c.out.String())
	}
	c.ready()
	c.waitFor("marker-42", 10*time.Second)
	c.input("echo env:$TERM:$USER:$HOME:$LOGNAME:$(id -un):$(pwd):$LANG\n")
	c.waitFor("env:xterm-256color:tl-user:/home/tl-user:tl-user:tl-user:/home/tl-user:C.UTF-8", 10*time.Second)
	c.input("stty size\n")
	c.waitFor("30 100", 10*time.Second)
	c.resize(120, 40)
	c.input("stty size\n")
	c.waitFor("40 120", 10*time.Second)
	s.JSON("POST", "/api/v1/pty/"+p.SessionID+"/resize", map[string]any{"rows": 9999, "cols": 0}, http.StatusNoContent, nil)
	c.input("stty size\n")
	c.waitFor("500 1", 10*time.Second)
	in := ptyGet(t, s, p.SessionID)
	if !in.IsAlive || in.Rows != 500 || in.Cols != 1 || in.Command != "/bin/sh" || in.EndedAt != nil || in.ExitCode != nil || in.PID <= 1 {
		t.Fatalf("get: %+v", in)
	}
	var list struct {
		Sessions []map[string]any `json:"sessions"`
	}
	s.JSON("GET", "/api/v1/pty", nil, http.StatusOK, &list)
	if len(list.Sessions) != 1 || list.Sessions[0]["session_id"] != p.SessionID {
		t.Fatalf("list: %+v", list)
	}
	if _, ok := list.Sessions[0]["token"]; ok {
		t.Fatalf("list shows the token")
	}
	c.input("exit 7\n")
	ce := c.waitClose(10 * time.Second)
	if c.exit != 7 || ce.Code != websocket.StatusNormalClosure || ce.Reason != "exit:7" {
		t.Fatalf("exit frame %d, close %v", c.exit, ce)
	}
	in = ptyGet(t, s, p.SessionID)
	if in.IsAlive || in.ExitCode == nil || *in.ExitCode != 7 || in.EndedAt == nil {
		t.Fatalf("after exit: %+v", in)
	}
}

// TestPTYAllOutputBeforeExit: a command that prints and exits at once
// loses nothing, whether the client attaches before or after the exit.
func TestPTYAllOutputBeforeExit(t *testing.T) {
	s := ptySystem(t, Options{})
	const n = 200000
	script := fmt.Sprintf("printf hi; head -c %d /dev/zero | tr '\\0' x; exit 4", n)
	for _, attachFirst := range []bool{false, true} {
		cmd := script
		if attachFirst {
			cmd = "sleep 0.5; " + script
		}
		p := ptyCreate(t, s, map[string]any{"command": "sh", "args": []string{"-c", cmd}})
		if !attachFirst {
			waitEnded(t, s, p.SessionID, 10*time.Second)
		}
		c := ptyDial(t, s, p)
		c.ready()
		ce := c.waitClose(20 * time.Second)
		want := "hi" + strings.Repeat("x", n)
		if c.out.String() != want || c.exit != 4 || ce.Reason != "exit:4" {
			t.Fatalf("attachFirst=%v: got %d bytes (want %d), exit %d, close %v", attachFirst, c.out.Len(), len(want), c.exit, ce)
		}
	}
	// echo hi, the classic.
	p := ptyCreate(t, s, map[string]any{"command": "echo", "args": []string{"hi"}})
	c := ptyDial(t, s, p)
	c.ready()
	c.waitClose(10 * time.Second)
	if c.out.String() != "hi\r\n" || c.exit != 0 {
		t.Fatalf("echo hi: %q exit %d", c.out.String(), c.exit)
	}
}

func TestPTYBackgroundGrandchild(t *testing.T) {
	s := ptySystem(t, Options{})
	p := ptyCreate(t, s, map[string]any{"command": "sh", "args": []string{"-c", "sleep 1000 & echo started; exit 5"}})
	c := ptyDial(t, s, p)
	c.ready()
	ce := c.waitClose(10 * time.Second)
	if c.exit != 5 || ce.Reason != "exit:5" || !strings.Contains(c.out.String(), "started") {
		t.Fatalf("exit %d close %v output %q", c.exit, ce, c.out.String())
	}
	if in := ptyGet(t, s, p.SessionID); in.IsAlive {
		t.Fatalf("session alive after its leader exited: %+v", in)
	}
}
