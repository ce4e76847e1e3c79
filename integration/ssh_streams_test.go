package integration

import (
	"bytes"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pkg/sftp"
	gossh "golang.org/x/crypto/ssh"
)

// TestSSHAgentDialedOnNeed: through the front door, sftp is served by a
// bare sftp stream, so a connection that only does sftp never opens an
// SSH connection to the agent's server; the first channel that needs the
// agent's server opens exactly one, which later channels share.
func TestSSHAgentDialedOnNeed(t *testing.T) {
	s := startSSH(t, Options{})
	signer := psshSigner(t, s.key)
	agentConns := func() int { return sshConnectionsTotal(t, s.System) }
	sftps := func() int { return sftpSessionsTotal(t, s.System) }
	base, sftpBase := agentConns(), sftps()
	c := psshDial(t, s.System, signer, "127.0.0.1")

	t.Run("keepalives before any session are answered without the agent", func(t *testing.T) {
		if ok, _, err := c.SendRequest("keepalive@openssh.com", true, nil); err != nil || ok {
			t.Fatalf("keepalive: ok %v, err %v; want a failure reply, as OpenSSH's sshd gives", ok, err)
		}
		if n := agentConns(); n != base {
			t.Fatalf("a keepalive opened %d SSH connections to the agent, want none", n-base)
		}
	})
	t.Run("sftp alone opens no SSH connection to the agent", func(t *testing.T) {
		cl, err := sftp.NewClient(c)
		if err != nil {
			t.Fatalf("sftp: %v", err)
		}
		wd, err := cl.Getwd()
		if err != nil || wd != "/home/tl-user" {
			t.Fatalf("sftp getwd: %q %v", wd, err)
		}
		f, err := cl.Create("lazy.txt")
		if err == nil {
			_, err = f.Write([]byte("lazy"))
			f.Close()
		}
		if err != nil {
			t.Fatalf("sftp write: %v", err)
		}
		cl.Close()
		if n := agentConns(); n != base {
			t.Fatalf("an sftp-only connection opened %d SSH connections to the agent, want none", n-base)
		}
		if n := sftps(); n != sftpBase+1 {
			t.Fatalf("sftp sessions served: %d, want 1", n-sftpBase)
		}
	})
	t.Run("sftp ends with exit status 0 at the client's EOF", func(t *testing.T) {
		ch, reqs, err := c.OpenChannel("session", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer ch.Close()
		if ok, err := ch.SendRequest("subsystem", true, gossh.Marshal(&struct{ Name string }{"sftp"})); !ok || err != nil {
			t.Fatalf("sftp subsystem: %v %v", ok, err)
		}
		_ = ch.CloseWrite()
		go func() { _, _ = io.Copy(io.Discard, ch) }()
		for req := range reqs {
			if req.Type == "exit-status" {
				var st struct{ Status uint32 }
				if gossh.Unmarshal(req.Payload, &st) != nil || st.Status != 0 {
					t.Fatalf("sftp at EOF: exit status %d, want 0 (scp fails otherwise)", st.Status)
				}
				return
			}
		}
		t.Fatal("sftp at EOF: the channel closed without an exit status")
	})
	t.Run("an sftp-server killed mid-session is reported as killed, not as success", func(t *testing.T) {
		ch, reqs, err := c.OpenChannel("session", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer ch.Close()
		if ok, err := ch.SendRequest("subsystem", true, gossh.Marshal(&struct{ Name string }{"sftp"})); !ok || err != nil {
			t.Fatalf("sftp subsystem: %v %v", ok, err)
		}
		// SSH_FXP_INIT version 3, and its SSH_FXP_VERSION reply: the
		// server runs and has answered a whole packet.
		if _, err := ch.Write([]byte{0, 0, 0, 5, 1, 0, 0, 0, 3}); err != nil {
			t.Fatal(err)
		}
		var hdr [5]byte
		if _, err := io.ReadFull(ch, hdr[:]); err != nil || hdr[4] != 2 {
			t.Fatalf("sftp version reply: %v %v", hdr, err)
		}
		go func() { _, _ = io.Copy(io.Discard, ch) }()
		pid := sandboxPidOf(t, s.System, "sftp-server")
		if out, err := s.Exec("kill", "-KILL", strconv.Itoa(pid)); err != nil {
			t.Fatalf("kill the sftp-server %d: %v %s", pid, err, out)
		}
		for req := range reqs {
			switch req.Type {
			case "exit-signal":
				var sig struct {
					Name          string
					Core          bool
					Message, Lang string
				}
				if gossh.Unmarshal(req.Payload, &sig) != nil || sig.Name != "KILL" {
					t.Fatalf("exit-signal %q, want KILL (the server's own end)", sig.Name)
				}
				return
			case "exit-status":
				var st struct{ Status uint32 }
				_ = gossh.Unmarshal(req.Payload, &st)
				t.Fatalf("a killed sftp-server reported exit status %d, want exit-signal KILL as sshd reports it", st.Status)
			}
		}
		t.Fatal("the channel closed without an exit")
	})
	t.Run("the first exec dials the agent once, later ones share it", func(t *testing.T) {
		for i := range 2 {
			sess, err := c.NewSession()
			if err != nil {
				t.Fatal(err)
			}
			out, err := sess.Output("cat lazy.txt")
			sess.Close()
			if err != nil || string(out) != "lazy" {
				t.Fatalf("exec %d: %q %v", i, out, err)
			}
			if n := agentConns(); n != base+1 {
				t.Fatalf("after exec %d: %d SSH connections to the agent, want 1", i, n-base)
			}
		}
	})
}

// TestSSHAgentSFTPSubsystem: sftp through the agent's own SSH server (its
// in-sandbox listener, directly and as a <port>-<sandbox> route) is served
// by the same SFTP sessions as the proxy's sftp streams.
func TestSSHAgentSFTPSubsystem(t *testing.T) {
	RequireRoot(t)
	port := sshFreePort(t)
	s := startSSH(t, Options{AgentArgs: []string{"--ssh-listen", fmt.Sprintf("127.0.0.1:%d", port)}})
	scan, err := exec.Command("ssh-keyscan", "-t", "ed25519", "-p", s.SSHPort(), "127.0.0.1").Output()
	if err != nil {
		t.Fatalf("ssh-keyscan: %v", err)
	}
	_, proxyKey, _ := strings.Cut(strings.TrimSpace(string(scan)), " ")
	s.writeUserKeys(t, proxyKey, s.key.Public)
	base := sftpSessionsTotal(t, s.System)
	ways := []struct {
		name string
		args []string
	}{
		{"direct to --ssh-listen", []string{"-P", strconv.Itoa(port), "tl-user@127.0.0.1"}},
		{"through the port route", []string{"-P", s.SSHPort(), fmt.Sprintf("%d-%s@127.0.0.1", port, s.SandboxID)}},
	}
	for i, w := range ways {
		args := append(append(s.SSHOpts(s.key.Private), "-b", "-"), w.args...)
		cmd := exec.Command("sftp", args...)
		cmd.Stdin = strings.NewReader("pwd\nmkdir sub" + strconv.Itoa(i) + "\n")
		out, err := cmd.CombinedOutput()
		if err != nil || !bytes.Contains(out, []byte("/home/tl-user")) {
			t.Fatalf("sftp %s: %v %q", w.name, err, out)
		}
		sshOwner(t, s.SandboxPath("/home/tl-user/sub"+strconv.Itoa(i)), s.uid)
	}
	if n := sftpSessionsTotal(t, s.System); n != base+len(ways) {
		t.Fatalf("sftpd served %d sessions for %d sftp runs through the agent's SSH server", n-base, len(ways))
	}
}

// sandboxPidOf finds the one process in the sandbox whose argv[1] is arg
// (the agent's re-executed helpers, such as its sftp-server), by reading
// the sandbox's /proc: the pid is the sandbox's, for s.Exec.
func sandboxPidOf(t *testing.T, s *System, arg string) int {
	t.Helper()
	script := `for d in /proc/[0-9]*; do set -- $(tr '\0' ' ' < $d/cmdline 2>/dev/null); [ "$2" = ` + arg + ` ] && echo ${d#/proc/}; done; true`
	for range 50 {
		out, err := s.Exec("sh", "-c", script)
		if err != nil {
			t.Fatalf("list the sandbox's processes: %v %s", err, out)
		}
		if f := strings.Fields(out); len(f) == 1 {
			pid, err := strconv.Atoi(f[0])
			if err == nil {
				return pid
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no single process %q in the sandbox", arg)
	return 0
}
