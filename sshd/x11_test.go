package sshd

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/tensorlake/tl-agent/forward"
	"github.com/tensorlake/tl-agent/internal/leakcheck"
)

// The SSH client's side of these tests plays the X server: it takes the
// x11 channels the agent opens. The sandbox side (an X client) is the
// test dialling the display's port (the test shares the server's
// network).

const x11Cookie = "00112233445566778899aabbccddeeff"

func needXauth(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("xauth"); err != nil {
		t.Skip("xauth not installed (scripts/deps.sh installs it)")
	}
}

func x11Req(single bool) []byte {
	return gossh.Marshal(&struct {
		Single bool
		Proto  string
		Cookie string
		Screen uint32
	}{single, "MIT-MAGIC-COOKIE-1", x11Cookie, 0})
}

// x11Session starts `command` in a session with X11 forwarding and
// XAUTHORITY in a temp folder, and returns the display number and the
// cookie the sandbox's xauth holds, read from the command's first lines
// (`echo $DISPLAY; xauth list`).
func x11Session(t *testing.T, c *gossh.Client, single bool, command string) (*gossh.Session, int, string) {
	t.Helper()
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.Setenv("XAUTHORITY", filepath.Join(t.TempDir(), "xa")); err != nil {
		t.Fatal(err)
	}
	if ok, err := sess.SendRequest("x11-req", true, x11Req(single)); !ok || err != nil {
		t.Fatalf("x11-req refused: %v", err)
	}
	if ok, _ := sess.SendRequest("x11-req", true, x11Req(single)); ok {
		t.Errorf("a second x11-req on the session was accepted")
	}
	out, err := sess.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.Start("echo $DISPLAY; xauth list; " + command); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(out)
	var n int
	line, _ := r.ReadString('\n')
	if _, err := fmt.Sscanf(line, "localhost:%d.0", &n); err != nil || n < 10 {
		t.Fatalf("DISPLAY %q, want localhost:N.0 with N >= 10", line)
	}
	line, _ = r.ReadString('\n')
	m := regexp.MustCompile(fmt.Sprintf(`/unix:%d\s+MIT-MAGIC-COOKIE-1\s+([0-9a-f]+)`, n)).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("xauth list %q: no cookie for display %d", line, n)
	}
	return sess, n, m[1]
}

// x11Setup is an X client's connection setup (little-endian).
func x11Setup(proto string, cookie []byte) []byte {
	b := make([]byte, 12)
	b[0] = 'l'
	binary.LittleEndian.PutUint16(b[2:], 11)
	binary.LittleEndian.PutUint16(b[6:], uint16(len(proto)))
	binary.LittleEndian.PutUint16(b[8:], uint16(len(cookie)))
	b = append(b, proto...)
	b = append(b, make([]byte, pad(len(proto)))...)
	b = append(b, cookie...)
	return append(b, make([]byte, pad(len(cookie)))...)
}

func pad(n int) int { return (4 - n%4) % 4 }

func dialDisplay(t *testing.T, n int) net.Conn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", 6000+n), 5*time.Second)
	if err != nil {
		t.Fatalf("dial display %d: %v", n, err)
	}
	_ = nc.SetDeadline(time.Now().Add(20 * time.Second))
	return nc
}

// acceptX11 returns the next x11 channel the server opened, with the
// setup packet the X server receives.
func acceptX11(t *testing.T, chans <-chan gossh.NewChannel) (gossh.Channel, []byte) {
	t.Helper()
	select {
	case nc := <-chans:
		var orig struct {
			Addr string
			Port uint32
		}
		if err := gossh.Unmarshal(nc.ExtraData(), &orig); err != nil || orig.Addr != "127.0.0.1" || orig.Port == 0 {
			t.Errorf("x11 channel's originator %+v (%v), want 127.0.0.1 and the client's port", orig, err)
		}
		ch, reqs, err := nc.Accept()
		if err != nil {
			t.Fatal(err)
		}
		go gossh.DiscardRequests(reqs)
		setup := make([]byte, len(x11Setup("MIT-MAGIC-COOKIE-1", make([]byte, 16))))
		if _, err := io.ReadFull(ch, setup); err != nil {
			t.Fatalf("read setup on the x11 channel: %v", err)
		}
		return ch, setup
	case <-time.After(20 * time.Second):
		t.Fatal("no x11 channel opened")
	}
	return nil, nil
}

func TestX11Forwarding(t *testing.T) {
	needXauth(t)
	c := dial(t)
	chans := c.HandleChannelOpen("x11")
	sess, n, fake := x11Session(t, c, false, "sleep 60")
	defer sess.Close()

	t.Run("the sandbox's cookie is not the client's", func(t *testing.T) {
		if fake == x11Cookie || len(fake) != len(x11Cookie) {
			t.Fatalf("xauth holds %s; want a fake cookie of the same length, not the client's %s", fake, x11Cookie)
		}
	})
	fakeBytes, _ := hex.DecodeString(fake)
	real, _ := hex.DecodeString(x11Cookie)

	t.Run("a wrong cookie is refused with an X11 reason, and reaches no client", func(t *testing.T) {
		nc := dialDisplay(t, n)
		defer nc.Close()
		_, _ = nc.Write(x11Setup("MIT-MAGIC-COOKIE-1", real))
		reply, _ := io.ReadAll(nc)
		if len(reply) < 8 || reply[0] != 0 || !strings.Contains(string(reply), "wrong X11 authorization") {
			t.Fatalf("reply %q, want an X11 Failed setup reply naming the wrong authorization", reply)
		}
		select {
		case <-chans:
			t.Fatal("an x11 channel was opened for a wrong cookie")
		default:
		}
	})

	t.Run("the fake cookie is swapped for the client's, then bytes flow both ways", func(t *testing.T) {
		for i := 0; i < 2; i++ { // not single-connection: a second one too
			nc := dialDisplay(t, n)
			_, _ = nc.Write(append(x11Setup("MIT-MAGIC-COOKIE-1", fakeBytes), "ping"...))
			ch, setup := acceptX11(t, chans)
			if string(setup) != string(x11Setup("MIT-MAGIC-COOKIE-1", real)) {
				t.Fatalf("the X server got setup %x, want the client's cookie in it", setup)
			}
			buf := make([]byte, 4)
			if _, err := io.ReadFull(ch, buf); err != nil || string(buf) != "ping" {
				t.Fatalf("read %q %v", buf, err)
			}
			_, _ = ch.Write([]byte("pong"))
			if _, err := io.ReadFull(nc, buf); err != nil || string(buf) != "pong" {
				t.Fatalf("X client read %q %v", buf, err)
			}
			ch.Close()
			nc.Close()
		}
	})

	t.Run("the display stops listening when its session ends", func(t *testing.T) {
		sess.Close()
		for i := 0; ; i++ {
			nc, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", 6000+n))
			if err != nil {
				break
			}
			nc.Close()
			if i == 100 {
				t.Fatalf("display %d still listening after its session closed", n)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

// A single-connection display (x11-req's first field) takes one X client,
// then stops listening, as sshd does.
func TestX11SingleConnection(t *testing.T) {
	needXauth(t)
	c := dial(t)
	chans := c.HandleChannelOpen("x11")
	sess, n, fake := x11Session(t, c, true, "sleep 60")
	defer sess.Close()
	fakeBytes, _ := hex.DecodeString(fake)
	nc := dialDisplay(t, n)
	defer nc.Close()
	_, _ = nc.Write(x11Setup("MIT-MAGIC-COOKIE-1", fakeBytes))
	ch, _ := acceptX11(t, chans)
	defer ch.Close()
	if nc2, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", 6000+n)); err == nil {
		nc2.Close()
		t.Fatalf("display %d still listening after its one connection", n)
	}
}

// Malformed x11-req payloads, and protocol names that would be read as
// more xauth commands, are refused.
func TestX11RequestRefused(t *testing.T) {
	c := dial(t)
	for name, payload := range map[string][]byte{
		"garbage": []byte("x"),
		"no cookie": gossh.Marshal(&struct {
			S    bool
			P, C string
			N    uint32
		}{false, "MIT-MAGIC-COOKIE-1", "", 0}),
		"odd hex": gossh.Marshal(&struct {
			S    bool
			P, C string
			N    uint32
		}{false, "MIT-MAGIC-COOKIE-1", "abc", 0}),
		"xauth command": gossh.Marshal(&struct {
			S    bool
			P, C string
			N    uint32
		}{false, "MIT\nremove *", x11Cookie, 0}),
		"space": gossh.Marshal(&struct {
			S    bool
			P, C string
			N    uint32
		}{false, "MIT MAGIC", x11Cookie, 0}),
	} {
		sess, err := c.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		if ok, _ := sess.SendRequest("x11-req", true, payload); ok {
			t.Errorf("%s: x11-req accepted", name)
		}
		sess.Close()
	}
}

// Close ends the display's listener and its relays: no goroutine or fd
// is left, even for an X connection that stays open and silent.
func TestX11CloseLeaksNothing(t *testing.T) {
	needXauth(t)
	u := me(t)
	base := leakcheck.Take(t)
	s, reaper, c, b := serveUncleaned(t, u)
	x11 := c.HandleChannelOpen("x11")
	_, n, fake := x11Session(t, c, false, "sleep 100")
	fakeBytes, _ := hex.DecodeString(fake)
	nc := dialDisplay(t, n)
	_, _ = nc.Write(x11Setup("MIT-MAGIC-COOKIE-1", fakeBytes))
	ch, _ := acceptX11(t, x11)
	_ = ch
	idle := dialDisplay(t, n) // never sends its setup

	c.Close()
	s.Close()
	reaper.Close()
	b.Close()
	nc.Close()
	idle.Close()
	base.Allow(1, 0).Check(t)
}

// A display holds at most forward.MaxX11Conns connections at once; one
// more is closed at once, and a freed slot serves the next client.
func TestX11ConnectionsPerDisplay(t *testing.T) {
	needXauth(t)
	c := dial(t)
	chans := c.HandleChannelOpen("x11")
	sess, n, fake := x11Session(t, c, false, "sleep 60")
	defer sess.Close()
	var held []net.Conn
	defer func() {
		for _, nc := range held {
			nc.Close()
		}
	}()
	for range forward.MaxX11Conns {
		held = append(held, dialDisplay(t, n)) // silent: waits in its setup
	}
	extra := dialDisplay(t, n)
	defer extra.Close()
	if b, err := io.ReadAll(extra); err != nil || len(b) != 0 {
		t.Fatalf("connection %d: read %q %v, want it closed at once", forward.MaxX11Conns+1, b, err)
	}
	held[0].Close()
	fakeBytes, _ := hex.DecodeString(fake)
	// The slot comes back once the closed one's setup read sees the
	// close: until then a new client is closed at once.
	for i := 0; ; i++ {
		nc := dialDisplay(t, n)
		held = append(held, nc)
		_, _ = nc.Write(x11Setup("MIT-MAGIC-COOKIE-1", fakeBytes))
		closed := make(chan struct{})
		go func() { _, _ = nc.Read(make([]byte, 1)); close(closed) }()
		select {
		case <-closed:
			if i == 100 {
				t.Fatal("no slot came back after a connection closed")
			}
			time.Sleep(50 * time.Millisecond)
			continue
		case x := <-chans:
			ch, reqs, err := x.Accept()
			if err != nil {
				t.Fatal(err)
			}
			go gossh.DiscardRequests(reqs)
			ch.Close()
		}
		break
	}
}
