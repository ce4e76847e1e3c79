package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// Attacks on tl-proxy's SSH front door (issue 10, items 7 and 8, and the
// front door's pre-auth bounds), run against the real proxy with a Go
// x/crypto/ssh client as the attacker and OpenSSH's clients as the victim.

// psshFloodBound is the RSS growth the channel flood may cause: the
// default caps hold at most 16 unstarted sessions per key, each with
// x/crypto's fixed 2 MiB window filled (32 MiB of data), plus the Go
// heap's slack. Without the caps the same flood holds 120 MiB of data.
const psshFloodBound = 96 << 20

// TestHostileProxySSH: one registered key cannot take the proxy's memory
// or its connection slots from everyone, and a key line the proxy does
// not understand opens nothing.
func TestHostileProxySSH(t *testing.T) {
	RequireRoot(t)
	attacker, victim, typo := NewSSHKey(t, "mallory@test"), NewSSHKey(t, "alice@test"), NewSSHKey(t, "typo@test")
	keys := WriteAuthorizedKeys(t, attacker.Public, victim.Public, `sandbox="nope" `+typo.Public)
	s := Start(t, Options{SSHKeys: keys})
	sandboxReady(t, s)
	signer := psshSigner(t, attacker)

	t.Run("a key line with an unknown option is refused, not opened to every sandbox", func(t *testing.T) {
		out, code := psshOpenSSH(t, s, typo, nil, "echo", "in")
		if code == 0 || strings.Contains(out, "in\n") {
			t.Fatalf("the key with sandbox= (a typo of sandboxes=) logged in: exit %d, %q", code, out)
		}
		if !strings.Contains(s.ProxyLog(), "ssh key refused") {
			t.Errorf("the refused line is not logged:\n%s", tail(s.ProxyLog(), 20))
		}
		if out, code := psshOpenSSH(t, s, victim, nil, "echo", "ok"); code != 0 || !strings.Contains(out, "ok") {
			t.Fatalf("the other keys must keep working: exit %d, %q", code, out)
		}
	})

	t.Run("a session-channel flood is capped and does not grow the proxy", func(t *testing.T) {
		psshChannelFlood(t, s, signer, victim)
	})

	// Small caps make the next rules cheap to reach.
	s.opts.ProxyArgs = append(s.opts.ProxyArgs, "--ssh-max-conns-per-source", "8")
	s.ReconfigureProxy(func(cfg map[string]any) {
		cfg["ssh_limits"] = map[string]any{
			"channels_per_conn": 6, "channels_per_key": 10, "unstarted_per_conn": 20, "unstarted_per_key": 20,
			"unstarted_timeout_seconds": 120, "handshake_timeout_seconds": 4,
		}
	})

	t.Run("channels are capped per connection and per key with a resource shortage", func(t *testing.T) {
		psshChannelCaps(t, s, signer)
	})

	t.Run("forwards the sandbox opens back are capped per connection", func(t *testing.T) {
		psshRemoteForwardCap(t, s, psshSigner(t, victim), 6)
	})

	t.Run("env requests held before a session starts are bounded", func(t *testing.T) {
		c := psshDial(t, s, psshSigner(t, victim), "127.0.0.1")
		ch, reqs, err := c.OpenChannel("session", nil)
		if err != nil {
			t.Fatal(err)
		}
		go gossh.DiscardRequests(reqs)
		accepted := 0
		for i := 0; i < 100; i++ {
			ok, err := ch.SendRequest("env", true, gossh.Marshal(&struct{ Name, Value string }{fmt.Sprintf("V%d", i), "x"}))
			if err != nil {
				t.Fatal(err)
			}
			if ok {
				accepted++
			}
		}
		if accepted != 64 {
			t.Errorf("%d of 100 env requests held, want the cap of 64", accepted)
		}
		ch.Close()
	})

	t.Run("query-only connections cannot hold a source's slots past the handshake deadline", func(t *testing.T) {
		psshQueryOnly(t, s, attacker, victim, 8, 4*time.Second)
	})
}

// psshChannelFlood opens 6 connections with one key, 10 session channels
// on each, and fills every channel's window without ever starting it: the
// attack of issue 10 item 8 (60 x 2 MiB took the proxy from 13 to 151 MB).
func psshChannelFlood(t *testing.T, s *System, signer gossh.Signer, victim SSHKey) {
	const conns, perConn, window = 6, 10, 2 << 20
	before := vmKB(t, s.ProxyPid(), "VmRSS") << 10
	var mu sync.Mutex
	var open []gossh.Channel
	refused := 0
	var writes sync.WaitGroup
	payload := make([]byte, window)
	// Every open at once: opens over the cap wait (unstarted_wait_seconds,
	// 2 s) for a slot that never frees, then are refused.
	var opens sync.WaitGroup
	for i := 0; i < conns; i++ {
		c := psshDial(t, s, signer, "127.0.0.1")
		for j := 0; j < perConn; j++ {
			opens.Add(1)
			go func() {
				defer opens.Done()
				ch, reqs, err := c.OpenChannel("session", nil)
				var oce *gossh.OpenChannelError
				mu.Lock()
				defer mu.Unlock()
				if errors.As(err, &oce) && oce.Reason == gossh.ResourceShortage && strings.Contains(oce.Message, "not yet started") {
					refused++
					return
				}
				if err != nil {
					t.Errorf("open channel: %v", err)
					return
				}
				go gossh.DiscardRequests(reqs)
				open = append(open, ch)
				writes.Add(1)
				go func() { defer writes.Done(); _, _ = ch.Write(payload) }()
			}()
		}
	}
	psshWait(t, &opens, 60*time.Second, "the flood's channel opens")
	psshWait(t, &writes, 60*time.Second, "the flood's writes")
	grown := vmKB(t, s.ProxyPid(), "VmRSS")<<10 - before
	t.Logf("flood: %d channels held, %d refused; proxy RSS grew %d MiB (bound %d MiB)", len(open), refused, grown>>20, psshFloodBound>>20)
	if len(open) > 16 {
		t.Errorf("%d unstarted sessions held for one key, cap 16", len(open))
	}
	if grown > psshFloodBound {
		t.Errorf("proxy RSS grew %d MiB under the flood, bound %d MiB", grown>>20, psshFloodBound>>20)
	}

	t.Run("other users keep working: ssh, scp and sftp", func(t *testing.T) {
		psshVictimWorks(t, s, victim)
	})

	t.Run("unstarted sessions are closed after the timeout, freeing their slots", func(t *testing.T) {
		var closed sync.WaitGroup
		stderr := make(chan string, len(open))
		for _, ch := range open {
			closed.Add(1)
			go func() {
				defer closed.Done()
				msg, _ := io.ReadAll(ch.Stderr())
				_, _ = io.Copy(io.Discard, ch)
				stderr <- string(msg)
			}()
		}
		psshWait(t, &closed, 60*time.Second, "the proxy closing unstarted sessions")
		close(stderr)
		for msg := range stderr {
			if !strings.Contains(msg, "not started within") {
				t.Errorf("closed without the reason: %q", msg)
			}
		}
		c := psshDial(t, s, signer, "127.0.0.1")
		sess, err := c.NewSession()
		if err != nil {
			t.Fatalf("a new session after the timeout: %v", err)
		}
		if out, err := sess.Output("echo back"); err != nil || string(out) != "back\n" {
			t.Fatalf("a started session after the flood: %q %v", out, err)
		}
	})
}

// psshChannelCaps needs channels_per_conn 6 and channels_per_key 10.
func psshChannelCaps(t *testing.T, s *System, signer gossh.Signer) {
	openN := func(c *gossh.Client, n int) (chans []gossh.Channel, refusal *gossh.OpenChannelError) {
		for i := 0; i < n; i++ {
			ch, reqs, err := c.OpenChannel("session", nil)
			if err != nil {
				if !errors.As(err, &refusal) || refusal.Reason != gossh.ResourceShortage {
					t.Fatalf("channel %d refused, but not as a resource shortage: %v", i, err)
				}
				return chans, refusal
			}
			go gossh.DiscardRequests(reqs)
			chans = append(chans, ch)
		}
		return chans, nil
	}
	a, b := psshDial(t, s, signer, "127.0.0.1"), psshDial(t, s, signer, "127.0.0.1")
	onA, refusal := openN(a, 7)
	if len(onA) != 6 || refusal == nil || !strings.Contains(refusal.Message, "connection") {
		t.Fatalf("one connection opened %d of 7 channels (cap 6), refusal %v", len(onA), refusal)
	}
	onB, refusal := openN(b, 5)
	if len(onB) != 4 || refusal == nil || !strings.Contains(refusal.Message, "key") {
		t.Fatalf("a second connection of the key opened %d of 5 channels (key cap 10, 6 in use), refusal %v", len(onB), refusal)
	}
	onA[0].Close()
	var got gossh.Channel
	for deadline := time.Now().Add(20 * time.Second); got == nil && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if more, _ := openN(b, 1); len(more) == 1 {
			got = more[0]
		}
	}
	if got == nil {
		t.Fatal("closing a channel did not free its slot")
	}
	for _, ch := range append(append(onA[1:], onB...), got) {
		ch.Close()
	}
}

// psshRemoteForwardCap: code in the sandbox connects to a -R port again
// and again; each connection is a channel the agent opens to the proxy.
// Past channels_per_conn (max) the proxy refuses them, and the agent
// hangs up on the extra connections.
func psshRemoteForwardCap(t *testing.T, s *System, signer gossh.Signer, max int) {
	c := psshDial(t, s, signer, "127.0.0.1")
	ln, err := c.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("-R forward: %v", err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 4*max)
	go func() {
		for {
			fc, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- fc
		}
	}()
	addr := ln.Addr().String() // the sandbox shares this machine's network
	var dialed []net.Conn
	for i := 0; i < max+4; i++ {
		dc, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			t.Fatalf("connect to the forwarded port: %v", err)
		}
		defer dc.Close()
		dialed = append(dialed, dc)
	}
	// Every dialed connection ends up either delivered or hung up on.
	var hungUp atomic.Int32
	var reads sync.WaitGroup
	for _, dc := range dialed {
		reads.Add(1)
		go func() {
			defer reads.Done()
			_ = dc.SetReadDeadline(time.Now().Add(3 * time.Second))
			if _, err := dc.Read(make([]byte, 1)); errors.Is(err, io.EOF) {
				hungUp.Add(1)
			}
		}()
	}
	reads.Wait()
	got := 0
	for done := false; !done; {
		select {
		case fc := <-accepted:
			defer fc.Close()
			got++
		case <-time.After(time.Second):
			done = true
		}
	}
	if got > max || int(hungUp.Load()) < len(dialed)-max {
		t.Fatalf("%d forwarded connections delivered, %d hung up, of %d (cap %d per connection)", got, hungUp.Load(), len(dialed), max)
	}
}

// psshQueryOnly fills one source's slots (--ssh-max-conns-per-source = slots) with
// connections that query a key (the proxy answers PK_OK) and never sign.
func psshQueryOnly(t *testing.T, s *System, attacker, victim SSHKey, slots int, deadline time.Duration) {
	// A connection authenticated before the flood, from its own source:
	// the deadline must no longer apply to it.
	held := psshDial(t, s, psshSigner(t, victim), "127.0.0.3")
	stall := &psshStallSigner{Signer: psshSigner(t, attacker), queried: make(chan struct{}, slots), release: make(chan struct{})}
	results := make(chan error, slots)
	for i := 0; i < slots; i++ {
		go func() {
			c, err := psshDialErr(s, stall, "127.0.0.1")
			if c != nil {
				c.Close()
			}
			results <- err
		}()
	}
	for i := 0; i < slots; i++ {
		select {
		case <-stall.queried:
		case <-time.After(30 * time.Second):
			t.Fatalf("only %d of %d connections reached the key query", i, slots)
		}
	}
	t.Run("one more connection from that source is refused", func(t *testing.T) {
		if c, err := psshDialErr(s, psshSigner(t, victim), "127.0.0.1"); err == nil {
			c.Close()
			t.Fatalf("connection %d from one source was served (cap %d)", slots+1, slots)
		}
	})
	t.Run("another source logs in meanwhile", func(t *testing.T) {
		if out, code := psshOpenSSH(t, s, victim, []string{"-b", "127.0.0.2"}, "echo", "ok"); code != 0 || !strings.Contains(out, "ok") {
			t.Fatalf("ssh from 127.0.0.2: exit %d, %q", code, out)
		}
	})
	time.Sleep(deadline + time.Second)
	close(stall.release) // now sign: the proxy must have hung up already
	for i := 0; i < slots; i++ {
		if err := <-results; err == nil {
			t.Fatal("a connection that only queried a key survived the handshake deadline and then logged in")
		}
	}
	t.Run("the source is served again after the deadline", func(t *testing.T) {
		var err error
		for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
			var c *gossh.Client
			if c, err = psshDialErr(s, psshSigner(t, victim), "127.0.0.1"); err == nil {
				c.Close()
				return
			}
		}
		t.Fatalf("127.0.0.1 still refused after the deadline: %v", err)
	})
	t.Run("an authenticated connection outlives the handshake deadline", func(t *testing.T) {
		sess, err := held.NewSession()
		if err != nil {
			t.Fatalf("session on the connection made before the flood: %v", err)
		}
		if out, err := sess.Output("echo held"); err != nil || string(out) != "held\n" {
			t.Fatalf("exec: %q %v", out, err)
		}
	})
}

// psshVictimWorks runs OpenSSH's ssh, scp and sftp through the proxy.
func psshVictimWorks(t *testing.T, s *System, key SSHKey) {
	if out, code := psshOpenSSH(t, s, key, nil, "echo", "ok"); code != 0 || !strings.Contains(out, "ok") {
		t.Fatalf("ssh: exit %d, %q", code, out)
	}
	dir := t.TempDir()
	src, back := filepath.Join(dir, "up.txt"), filepath.Join(dir, "down.txt")
	if err := os.WriteFile(src, []byte("payload"), 0o644); err != nil {
		t.Fatal(err)
	}
	scp := append(append([]string{"-P", s.SSHPort()}, s.SSHOpts(key.Private)...), src, s.SSHDest()+":flood-up.txt")
	if out, err := exec.Command("scp", scp...).CombinedOutput(); err != nil {
		t.Fatalf("scp: %v %s", err, out)
	}
	sftp := append(append([]string{"-P", s.SSHPort(), "-b", "-"}, s.SSHOpts(key.Private)...), s.SSHDest())
	cmd := exec.Command("sftp", sftp...)
	cmd.Stdin = strings.NewReader("get flood-up.txt " + back + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sftp: %v %s", err, out)
	}
	if got, err := os.ReadFile(back); err != nil || string(got) != "payload" {
		t.Fatalf("scp then sftp round trip: %q %v", got, err)
	}
}

// psshOpenSSH runs OpenSSH's ssh through the proxy with key; opts go
// before the destination.
func psshOpenSSH(t *testing.T, s *System, key SSHKey, opts []string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	full := append(append(s.SSHArgs(key.Private), opts...), append([]string{s.SSHDest()}, args...)...)
	out, err := exec.CommandContext(ctx, "ssh", full...).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	}
	t.Fatalf("ssh: %v", err)
	return "", -1
}

func psshSigner(t *testing.T, key SSHKey) gossh.Signer {
	t.Helper()
	pem, err := os.ReadFile(key.Private)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := gossh.ParsePrivateKey(pem)
	if err != nil {
		t.Fatalf("parse %s: %v", key.Private, err)
	}
	return signer
}

// psshDialErr logs in to the front door from the source address src.
func psshDialErr(s *System, signer gossh.Signer, src string) (*gossh.Client, error) {
	d := net.Dialer{Timeout: 20 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", s.SSHAddr)
	if err != nil {
		return nil, err
	}
	cfg := &gossh.ClientConfig{User: s.SandboxID, Auth: []gossh.AuthMethod{gossh.PublicKeys(signer)},
		HostKeyCallback: gossh.InsecureIgnoreHostKey(), Timeout: 20 * time.Second}
	conn, chans, reqs, err := gossh.NewClientConn(c, s.SSHAddr, cfg)
	if err != nil {
		c.Close()
		return nil, err
	}
	return gossh.NewClient(conn, chans, reqs), nil
}

func psshDial(t *testing.T, s *System, signer gossh.Signer, src string) *gossh.Client {
	t.Helper()
	c, err := psshDialErr(s, signer, src)
	if err != nil {
		t.Fatalf("ssh login from %s: %v", src, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// psshStallSigner lets the client query its key, then holds the
// signature until release is closed.
type psshStallSigner struct {
	gossh.Signer
	queried chan struct{}
	release chan struct{}
}

func (p *psshStallSigner) Sign(r io.Reader, data []byte) (*gossh.Signature, error) {
	p.queried <- struct{}{}
	<-p.release
	return p.Signer.Sign(r, data)
}

func psshWait(t *testing.T, wg *sync.WaitGroup, d time.Duration, what string) {
	t.Helper()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s did not finish within %v", what, d)
	}
}
