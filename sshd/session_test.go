package sshd

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	gossh "golang.org/x/crypto/ssh"

	"github.com/tensorlake/tl-agent/internal/streams"
	"github.com/tensorlake/tl-agent/supervisor"
)

// dial starts a server running programs as the current user and returns
// a client connected to it over loopback.
func dial(t *testing.T) *gossh.Client {
	t.Helper()
	return dialWith(t, Config{})
}

// dialWith is dial with cfg (whose User is set here).
func dialWith(t *testing.T, cfg Config) *gossh.Client {
	t.Helper()
	cfg.User = me(t)
	reaper := supervisor.NewReaper(zerolog.Nop(), false)
	stop := make(chan struct{})
	go reaper.Run(stop)
	t.Cleanup(func() { close(stop) })
	s, err := New(cfg, zerolog.Nop(), reaper)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	a, b := tcpPair(t)
	go s.ServeConn(context.Background(), a, streams.Peer{User: "test"})
	conn, chans, reqs, err := gossh.NewClientConn(b, "pipe", &gossh.ClientConfig{User: "x", HostKeyCallback: gossh.InsecureIgnoreHostKey()})
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	c := gossh.NewClient(conn, chans, reqs)
	t.Cleanup(func() { c.Close() })
	return c
}

// A window change between pty-req and exec must neither hang the session
// (gliderlabs' one-slot channel did) nor be lost.
func TestWindowChangeBeforeExec(t *testing.T) {
	c := dial(t)
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.RequestPty("xterm", 24, 80, nil); err != nil {
		t.Fatal(err)
	}
	for _, size := range [][2]int{{30, 100}, {40, 120}, {50, 132}} {
		if err := sess.WindowChange(size[0], size[1]); err != nil {
			t.Fatal(err)
		}
	}
	out, err := sess.Output("stty size")
	if err != nil {
		t.Fatalf("stty size: %v (%q)", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "50 132" {
		t.Fatalf("size %q, want the last window change, 50 132", got)
	}
}

// A program killed by a signal is reported with exit-signal, its output
// all delivered first.
func TestExitSignal(t *testing.T) {
	c := dial(t)
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	sess.Stdout = &out
	err = sess.Run("echo before; kill -TERM $$")
	ee, ok := err.(*gossh.ExitError)
	if !ok || ee.Signal() != "TERM" {
		t.Fatalf("err %v, want exit-signal TERM", err)
	}
	if out.String() != "before\n" {
		t.Fatalf("output %q", out.String())
	}
}

// Without a PTY, stdin's EOF reaches the program and the exit status is
// passed back; stdout and stderr stay apart.
func TestExecPipes(t *testing.T) {
	c := dial(t)
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	sess.Stdin = strings.NewReader("a\r\nb\n")
	sess.Stdout, sess.Stderr = &out, &errb
	err = sess.Run("cat; echo x >&2; exit 5")
	if ee, ok := err.(*gossh.ExitError); !ok || ee.ExitStatus() != 5 {
		t.Fatalf("err %v, want exit 5", err)
	}
	if out.String() != "a\r\nb\n" || errb.String() != "x\n" {
		t.Fatalf("stdout %q stderr %q", out.String(), errb.String())
	}
}

// A signal request reaches the program (and its group).
func TestSignalRequest(t *testing.T) {
	c := dial(t)
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := sess.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.Start("trap 'echo got; exit 3' USR1; echo ready; while :; do sleep 0.05; done"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	if _, err := io.ReadFull(stdout, buf); err != nil || string(buf) != "ready\n" {
		t.Fatalf("ready: %q %v", buf, err)
	}
	if err := sess.Signal(gossh.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(stdout)
	err = sess.Wait()
	if ee, ok := err.(*gossh.ExitError); !ok || ee.ExitStatus() != 3 || string(rest) != "got\n" {
		t.Fatalf("after USR1: err %v, output %q", err, rest)
	}
}

// A program that cannot start is exit status 1 with the reason on stderr,
// then EOF and close.
func TestUnknownSubsystem(t *testing.T) {
	c := dial(t)
	ch, reqs, err := c.OpenChannel("session", nil)
	if err != nil {
		t.Fatal(err)
	}
	ok, err := ch.SendRequest("subsystem", true, gossh.Marshal(&struct{ Name string }{"nope"}))
	if err != nil || !ok {
		t.Fatalf("subsystem request: %v %v", ok, err)
	}
	stderr, _ := io.ReadAll(ch.Stderr())
	var status []string
	for r := range reqs {
		status = append(status, r.Type)
		if r.Type == "exit-status" && gossh.Unmarshal(r.Payload, &struct{ Status uint32 }{}) != nil {
			t.Errorf("bad exit-status payload")
		}
	}
	if !strings.Contains(string(stderr), "unknown subsystem") || len(status) != 1 || status[0] != "exit-status" {
		t.Fatalf("stderr %q, requests %v", stderr, status)
	}
}

// RFC 4254 §6.10 order, which OpenSSH clients rely on: all output, then
// exit-status, then EOF, then close; and the client never has to close
// its stdin for that to happen.
func TestExitOrderWithoutClientEOF(t *testing.T) {
	c := dial(t)
	ch, reqs, err := c.OpenChannel("session", nil)
	if err != nil {
		t.Fatal(err)
	}
	ok, err := ch.SendRequest("exec", true, gossh.Marshal(&struct{ Command string }{"head -c 100000 /dev/zero; echo; exit 9"}))
	if err != nil || !ok {
		t.Fatalf("exec: %v %v", ok, err)
	}
	out, err := io.ReadAll(ch) // returns at the server's EOF
	if err != nil || len(out) != 100001 {
		t.Fatalf("output: %d bytes, %v", len(out), err)
	}
	// Requests are delivered in order with data: exit-status came first.
	select {
	case r := <-reqs:
		var st struct{ Status uint32 }
		if r.Type != "exit-status" || gossh.Unmarshal(r.Payload, &st) != nil || st.Status != 9 {
			t.Fatalf("first request after output: %s %v", r.Type, st)
		}
	default:
		t.Fatal("EOF arrived before exit-status")
	}
	if _, ok := <-reqs; ok {
		t.Fatal("more requests after exit-status")
	}
}
