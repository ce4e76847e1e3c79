package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
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

// ptySystem starts a sandbox and checks that tl-user is there.
func ptySystem(t *testing.T, opts Options) *System {
	t.Helper()
	RequireRoot(t)
	s := Start(t, opts)
	// tl-user comes from the agent's own provisioning; nothing here
	// creates it, so a provisioning failure fails these tests.
	if out, err := s.Exec("id", "-u", "tl-user"); err != nil {
		t.Fatalf("tl-user missing in the sandbox: %v: %s", err, out)
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

func (p *ptyConn) ready()         { p.send([]byte{0x02}) }
func (p *ptyConn) input(s string) { p.send(append([]byte{0x00}, s...)) }
func (p *ptyConn) resize(c, r int) {
	p.send(binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16([]byte{0x01}, uint16(c)), uint16(r)))
}

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

// waitCount reads until the output contains want n times. A line typed
// into cat shows twice, the terminal's echo and cat's copy, in an order
// that depends on when cat reads: count, never assume the interleaving.
func (p *ptyConn) waitCount(want string, n int, d time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(d)
	for strings.Count(p.out.String(), want) < n {
		open, _ := p.take(time.Until(deadline))
		if !open || time.Now().After(deadline) {
			p.t.Fatalf("%q not %d times in output within %v (err %v): %q", want, n, d, p.err, tailStr(p.out.String(), 400))
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

func TestPTYKill(t *testing.T) {
	s := ptySystem(t, Options{})
	// A shell that ignores SIGHUP, with a background child that does too:
	// both die by SIGKILL after the grace period.
	p := ptyCreate(t, s, map[string]any{"command": "sh", "args": []string{"-c", "trap '' HUP; sleep 1000 & echo up; wait"}})
	c := ptyDial(t, s, p)
	c.ready()
	c.waitFor("up", 10*time.Second)
	start := time.Now()
	resp := s.Do("DELETE", "/api/v1/pty/"+p.SessionID, nil)
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("delete: %d", resp.StatusCode)
	}
	ce := c.waitClose(20 * time.Second)
	if ce.Code != websocket.StatusGoingAway || ce.Reason != "session terminated" || c.exit != -1 {
		t.Fatalf("close %v exit frame %d", ce, c.exit)
	}
	in := waitEnded(t, s, p.SessionID, 10*time.Second)
	if took := time.Since(start); took < 4*time.Second || in.ExitCode == nil || *in.ExitCode != 137 {
		t.Fatalf("ended after %v with %+v: want SIGKILL after the 5 s grace", took, in)
	}
	// The background child is gone too.
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, _ := s.Exec("sh", "-c", `for p in /proc/[0-9]*; do tr '\0' ' ' < $p/cmdline 2>/dev/null; echo; done | grep -c '^sleep 1000' || true`)
		if strings.TrimSpace(out) == "0" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("background child survived the kill: %s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// A plain shell dies of the hang-up at once; DELETE of an ended session is fine.
	p2 := ptyCreate(t, s, map[string]any{"command": "sh"})
	s.JSON("DELETE", "/api/v1/pty/"+p2.SessionID, nil, http.StatusNoContent, nil)
	if in := waitEnded(t, s, p2.SessionID, 3*time.Second); *in.ExitCode != 129 {
		t.Fatalf("hung-up shell: %+v", in)
	}
	s.JSON("DELETE", "/api/v1/pty/"+p2.SessionID, nil, http.StatusNoContent, nil)
}

func TestPTYReattachReplay(t *testing.T) {
	s := ptySystem(t, Options{})
	p := ptyCreate(t, s, map[string]any{"command": "sh", "args": []string{"-c",
		"echo first; read x; i=0; while [ $i -lt 2000 ]; do echo detached-line-$i; i=$((i+1)); done; echo detached-done; read y; echo second-$y"}})
	c1 := ptyDial(t, s, p)
	c1.ready()
	c1.waitFor("first", 10*time.Second)
	c1.c.Close(websocket.StatusNormalClosure, "going")
	// Input from a new client; output produced while nobody is attached.
	c2 := ptyDial(t, s, p)
	c2.input("go\n")
	c2.c.Close(websocket.StatusNormalClosure, "going")
	time.Sleep(300 * time.Millisecond)
	// Token in the query this time.
	conn, _, err := ptyDialRaw(s, p.SessionID, nil, "?token="+p.Token)
	if err != nil {
		t.Fatalf("dial with query token: %v", err)
	}
	conn.CloseNow()
	c3 := ptyDial(t, s, p)
	c3.ready()
	c3.waitFor("detached-done", 10*time.Second)
	for _, want := range []string{"first", "detached-line-0\r\n", "detached-line-1999\r\n"} {
		if !strings.Contains(c3.out.String(), want) {
			t.Fatalf("replay lacks %q", want)
		}
	}
	c3.input("again\n")
	c3.waitFor("second-again", 10*time.Second)
	c3.waitClose(10 * time.Second)
	if c3.exit != 0 {
		t.Fatalf("exit %d", c3.exit)
	}
}

func TestPTYTwoClients(t *testing.T) {
	s := ptySystem(t, Options{})
	p := ptyCreate(t, s, map[string]any{"command": "cat"})
	a, b := ptyDial(t, s, p), ptyDial(t, s, p)
	a.ready()
	b.ready()
	a.input("from-a\n")
	b.input("from-b\n")
	for _, c := range []*ptyConn{a, b} { // each client sees both inputs, echoed and copied by cat
		c.waitCount("from-a", 2, 10*time.Second)
		c.waitCount("from-b", 2, 10*time.Second)
	}
	// One client leaving does not disturb the other.
	a.c.Close(websocket.StatusNormalClosure, "")
	b.input("still-here\n")
	b.waitCount("still-here", 2, 10*time.Second)
	b.input("\x04") // EOF to cat
	b.waitClose(10 * time.Second)
	if b.exit != 0 {
		t.Fatalf("exit %d", b.exit)
	}
}

func TestPTYIdleKill(t *testing.T) {
	s := ptySystem(t, Options{AgentArgs: []string{"--pty-idle-timeout", "2s"}})
	never := ptyCreate(t, s, map[string]any{"command": "sleep", "args": []string{"1000"}})
	watched := ptyCreate(t, s, map[string]any{"command": "sleep", "args": []string{"1000"}})
	c := ptyDial(t, s, watched)
	c.ready()
	in := waitEnded(t, s, never.SessionID, 15*time.Second)
	if *in.ExitCode != 129 {
		t.Fatalf("idle session: %+v", in)
	}
	if !ptyGet(t, s, watched.SessionID).IsAlive {
		t.Fatalf("a session with a client attached was killed as idle")
	}
	c.c.Close(websocket.StatusNormalClosure, "")
	waitEnded(t, s, watched.SessionID, 15*time.Second)
}

func TestPTYSessionLimit(t *testing.T) {
	s := ptySystem(t, Options{AgentArgs: []string{"--pty-max-sessions", "3"}})
	var ids []string
	for i := 0; i < 3; i++ {
		ids = append(ids, ptyCreate(t, s, map[string]any{"command": "sleep", "args": []string{"1000"}}).SessionID)
	}
	var e map[string]string
	s.JSON("POST", "/api/v1/pty", map[string]any{"command": "sleep", "args": []string{"1000"}}, http.StatusTooManyRequests, &e)
	if e["code"] != "TOO_MANY_SESSIONS" {
		t.Fatalf("over the limit: %v", e)
	}
	s.JSON("DELETE", "/api/v1/pty/"+ids[0], nil, http.StatusNoContent, nil)
	waitEnded(t, s, ids[0], 10*time.Second)
	// An ended session no longer counts, but stays queryable.
	ptyCreate(t, s, map[string]any{"command": "sleep", "args": []string{"1000"}})
	ptyGet(t, s, ids[0])
}

func TestPTYConcurrent(t *testing.T) {
	const n = 200
	s := ptySystem(t, Options{AgentArgs: []string{"--pty-max-sessions", "256"}})
	sessions := make([]ptyCreated, n)
	for i := range sessions {
		sessions[i] = ptyCreate(t, s, map[string]any{"command": "sh", "args": []string{"-c", "read x; echo got-$x; exit 3"}})
	}
	var list struct {
		Sessions []ptyInfo `json:"sessions"`
	}
	s.JSON("GET", "/api/v1/pty", nil, http.StatusOK, &list)
	alive := 0
	for _, in := range list.Sessions {
		if in.IsAlive {
			alive++
		}
	}
	if alive != n {
		t.Fatalf("%d sessions alive, want %d", alive, n)
	}
	errs := make(chan error, n)
	for i, p := range sessions {
		go func() {
			errs <- func() error {
				c, _, err := ptyDialRaw(s, p.SessionID, http.Header{"X-PTY-Token": {p.Token}}, "")
				if err != nil {
					return err
				}
				defer c.CloseNow()
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				if err := c.Write(ctx, websocket.MessageBinary, []byte{0x02}); err != nil {
					return err
				}
				if err := c.Write(ctx, websocket.MessageBinary, []byte(fmt.Sprintf("\x00n%d\n", i))); err != nil {
					return err
				}
				var out []byte
				for {
					_, msg, err := c.Read(ctx)
					if err != nil {
						if websocket.CloseStatus(err) == websocket.StatusNormalClosure && bytes.Contains(out, []byte(fmt.Sprintf("got-n%d", i))) {
							return nil
						}
						return fmt.Errorf("session %d: %v after %q", i, err, out)
					}
					if msg[0] == 0x00 {
						out = append(out, msg[1:]...)
					}
				}
			}()
		}()
	}
	for range sessions {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

func TestPTYErrors(t *testing.T) {
	s := ptySystem(t, Options{})
	p := ptyCreate(t, s, map[string]any{"command": "cat"})
	ghost := "AAAAAAAAAAAAAAAAAAAAA"
	cases := []struct {
		name, method, path string
		body               any
		status             int
		code               string
	}{
		{"no command", "POST", "/api/v1/pty", map[string]any{"args": []string{"x"}}, 400, "INVALID_REQUEST"},
		{"bad json", "POST", "/api/v1/pty", "{", 400, "INVALID_REQUEST"},
		{"command not found", "POST", "/api/v1/pty", map[string]any{"command": "no-such-command-xyz"}, 400, "COMMAND_NOT_FOUND"},
		{"missing path", "POST", "/api/v1/pty", map[string]any{"command": "/nope/bin/x"}, 400, "COMMAND_NOT_FOUND"},
		{"not executable", "POST", "/api/v1/pty", map[string]any{"command": "/etc/passwd"}, 400, "NOT_EXECUTABLE"},
		{"directory", "POST", "/api/v1/pty", map[string]any{"command": "/usr"}, 400, "NOT_EXECUTABLE"},
		{"bad working dir", "POST", "/api/v1/pty", map[string]any{"command": "sh", "working_dir": "/nope"}, 400, "INVALID_WORKING_DIR"},
		{"working dir is a file", "POST", "/api/v1/pty", map[string]any{"command": "sh", "working_dir": "/etc/passwd"}, 400, "INVALID_WORKING_DIR"},
		{"bad env", "POST", "/api/v1/pty", map[string]any{"command": "sh", "env": map[string]string{"A=B": "x"}}, 400, "INVALID_REQUEST"},
		{"unknown user", "POST", "/api/v1/pty", map[string]any{"command": "sh", "user": "nobody-here"}, 400, "UNKNOWN_USER"},
		{"get unknown", "GET", "/api/v1/pty/" + ghost, nil, 404, "SESSION_NOT_FOUND"},
		{"resize unknown", "POST", "/api/v1/pty/" + ghost + "/resize", map[string]any{"rows": 1, "cols": 1}, 404, "SESSION_NOT_FOUND"},
		{"resize without cols", "POST", "/api/v1/pty/" + p.SessionID + "/resize", map[string]any{"rows": 10}, 400, "INVALID_REQUEST"},
		{"resize without body", "POST", "/api/v1/pty/" + p.SessionID + "/resize", nil, 400, "INVALID_REQUEST"},
		{"delete unknown", "DELETE", "/api/v1/pty/" + ghost, nil, 404, "SESSION_NOT_FOUND"},
		{"ws unknown", "GET", "/api/v1/pty/" + ghost + "/ws?token=" + p.Token, nil, 404, "SESSION_NOT_FOUND"},
		{"ws no token", "GET", "/api/v1/pty/" + p.SessionID + "/ws", nil, 403, "INVALID_TOKEN"},
		{"ws wrong token", "GET", "/api/v1/pty/" + p.SessionID + "/ws?token=" + strings.Repeat("0", 64), nil, 403, "INVALID_TOKEN"},
		{"ws not an upgrade", "GET", "/api/v1/pty/" + p.SessionID + "/ws?token=" + p.Token, nil, 426, "UPGRADE_REQUIRED"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s.WantError(t, c.method, c.path, c.body, c.status, c.code)
		})
	}
	// The WebSocket handshake itself refuses a wrong token with 403.
	_, resp, err := ptyDialRaw(s, p.SessionID, http.Header{"X-PTY-Token": {"wrong"}}, "")
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("dial with wrong token: %v %v", resp, err)
	}
	// Bad frames close the connection cleanly; the session lives on.
	frames := []struct {
		name string
		send func(c *websocket.Conn) error
		code websocket.StatusCode
	}{
		{"text message", func(c *websocket.Conn) error {
			return c.Write(context.Background(), websocket.MessageText, []byte("hello"))
		}, websocket.StatusUnsupportedData},
		{"unknown opcode", func(c *websocket.Conn) error {
			return c.Write(context.Background(), websocket.MessageBinary, []byte{0x09, 1})
		}, websocket.StatusProtocolError},
		{"truncated resize", func(c *websocket.Conn) error {
			return c.Write(context.Background(), websocket.MessageBinary, []byte{0x01, 0, 80})
		}, websocket.StatusProtocolError},
		{"oversized", func(c *websocket.Conn) error {
			return c.Write(context.Background(), websocket.MessageBinary, append([]byte{0}, make([]byte, 70<<10)...))
		}, websocket.StatusMessageTooBig},
	}
	for _, f := range frames {
		t.Run(f.name, func(t *testing.T) {
			c := ptyDial(t, s, p)
			c.ready()
			_ = f.send(c.c)
			if ce := c.waitClose(10 * time.Second); ce.Code != f.code {
				t.Fatalf("close %v, want %d", ce, f.code)
			}
		})
	}
	c := ptyDial(t, s, p)
	c.ready()
	c.input("alive\n")
	c.waitFor("alive\r\nalive", 10*time.Second)
	if !ptyGet(t, s, p.SessionID).IsAlive {
		t.Fatalf("session died of bad frames")
	}
}

// TestPTYStalledClient: a client that stops reading is dropped; the
// program and the other client carry on.
func TestPTYStalledClient(t *testing.T) {
	s := ptySystem(t, Options{})
	const n = 16 << 20
	p := ptyCreate(t, s, map[string]any{"command": "sh", "args": []string{"-c",
		fmt.Sprintf("read x; head -c %d /dev/zero | tr '\\0' y; echo; echo END", n)}})
	stalled := dialNoRead(t, s, p)
	defer stalled.Close()
	c := ptyDial(t, s, p)
	c.ready()
	c.input("go\n")
	c.waitFor("END", 90*time.Second)
	c.waitClose(10 * time.Second)
	if got := strings.Count(c.out.String(), "y"); got != n {
		t.Fatalf("reading client got %d bytes of %d", got, n)
	}
	if pty := agentState(t, s).PTYSessions; pty == nil || pty.ClientsDropped != 1 {
		t.Fatalf("the stalled client was not dropped: status %+v, want clients_dropped 1", pty)
	}
}

// dialNoRead opens a WebSocket by hand, sends READY and never reads.
func dialNoRead(t *testing.T, s *System, p ptyCreated) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", s.HTTPAddr)
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.(*net.TCPConn).SetReadBuffer(4096)
	fmt.Fprintf(conn, "GET /api/v1/pty/%s/ws HTTP/1.1\r\nHost: %s.local\r\nAuthorization: Bearer %s\r\nX-PTY-Token: %s\r\n"+
		"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
		p.SessionID, s.SandboxID, s.APIKey, p.Token)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	// A masked binary frame holding READY (mask 0: payload unchanged).
	if _, err := conn.Write([]byte{0x82, 0x81, 0, 0, 0, 0, 0x02}); err != nil {
		t.Fatal(err)
	}
	return conn
}
