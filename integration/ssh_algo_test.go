package integration

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/tensorlake/tl-agent/internal/sshalgo"
)

// The SSH algorithms both doors offer (issue 15 item 1), each tried with
// the clients people have: OpenSSH forcing one algorithm at a time,
// Debian's paramiko (Ansible, Fabric) and curl's sftp:// (libssh2). Before,
// only AES-GCM was offered and all of these but the GCM ciphers failed.

// sshDoor is one SSH server of a system: the proxy's front door or the
// agent's in-sandbox listener (--ssh-listen).
type sshDoor struct {
	name string
	port string
	user string
	logs func() string // the log that records its failed handshakes
}

// algoSystem is a sandbox with both doors open to s.key.
func algoSystem(t *testing.T) (*sshSystem, []sshDoor) {
	t.Helper()
	s, addr := listenSSH(t)
	s.writeUserKeys(t, s.key.Public)
	_, port, _ := strings.Cut(addr, ":")
	return s, []sshDoor{
		{name: "front-door", port: s.SSHPort(), user: s.SandboxID, logs: s.ProxyLog},
		{name: "listener", port: port, user: "tl-user", logs: s.AgentLog},
	}
}

// sshDoorRun runs OpenSSH's ssh against d with opts and returns the
// combined output and the exit code.
func (s *sshSystem) sshDoorRun(t *testing.T, d sshDoor, opts []string, cmd string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args := append(append(slices.Clone(opts), s.SSHOpts(s.key.Private)...), "-p", d.port, d.user+"@127.0.0.1", cmd)
	out, err := exec.CommandContext(ctx, "ssh", args...).CombinedOutput()
	return string(out), sshExitCode(t, err)
}

// opensshOffers reports whether this OpenSSH client implements name
// (ssh -Q kind): Debian 12's 9.2 has no mlkem768x25519-sha256.
func opensshOffers(t *testing.T, kind, name string) bool {
	t.Helper()
	out, err := exec.Command("ssh", "-Q", kind).Output()
	if err != nil {
		t.Fatalf("ssh -Q %s: %v", kind, err)
	}
	return slices.Contains(strings.Fields(string(out)), name)
}

// TestSSHAlgorithms: every cipher, key exchange and (with AES-CTR) MAC in
// internal/sshalgo, each forced alone with OpenSSH's ssh, runs a command
// through both doors. A key exchange this OpenSSH lacks is tried with
// x/crypto's client against the real binaries.
func TestSSHAlgorithms(t *testing.T) {
	s, doors := algoSystem(t)
	type algo struct{ kind, name string }
	var algos []algo
	for _, n := range sshalgo.Ciphers {
		algos = append(algos, algo{"cipher", n})
	}
	for _, n := range append(slices.Clone(sshalgo.KeyExchanges), "curve25519-sha256@libssh.org") {
		algos = append(algos, algo{"kex", n})
	}
	for _, n := range sshalgo.MACs {
		algos = append(algos, algo{"mac", n})
	}
	for _, d := range doors {
		for _, a := range algos {
			t.Run(d.name+"/"+a.kind+"/"+a.name, func(t *testing.T) {
				if a.kind == "kex" && !opensshOffers(t, "kex", a.name) {
					s.goClientKex(t, d, a.name)
					return
				}
				var opts []string
				switch a.kind {
				case "cipher":
					opts = []string{"-c", a.name}
				case "kex":
					opts = []string{"-o", "KexAlgorithms=" + a.name}
				case "mac":
					opts = []string{"-c", "aes128-ctr", "-o", "MACs=" + a.name}
				}
				out, code := s.sshDoorRun(t, d, opts, "echo algo-ok")
				if code != 0 || out != "algo-ok\n" {
					t.Fatalf("ssh %v: exit %d, output %q", opts, code, out)
				}
			})
		}
	}
}

// goClientKex logs in to d with x/crypto offering only kex and runs a
// command.
func (s *sshSystem) goClientKex(t *testing.T, d sshDoor, kex string) {
	t.Helper()
	pem, err := os.ReadFile(s.key.Private)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := gossh.ParsePrivateKey(pem)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &gossh.ClientConfig{User: d.user, Auth: []gossh.AuthMethod{gossh.PublicKeys(signer)},
		HostKeyCallback: gossh.InsecureIgnoreHostKey(), Timeout: 30 * time.Second,
		Config: gossh.Config{KeyExchanges: []string{kex}}}
	c, err := gossh.Dial("tcp", net.JoinHostPort("127.0.0.1", d.port), cfg)
	if err != nil {
		t.Fatalf("x/crypto client with %s: %v", kex, err)
	}
	defer c.Close()
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	out, err := sess.CombinedOutput("echo algo-ok")
	if err != nil || string(out) != "algo-ok\n" {
		t.Fatalf("command: %v %q", err, out)
	}
}

// TestSSHClientOrderWins: OpenSSH's own preference (chacha20-poly1305
// first) is what both doors settle on, as with OpenSSH's sshd; a client
// that offers nothing in common is refused, and the door logs one info
// line with the reason.
func TestSSHClientOrderWins(t *testing.T) {
	s, doors := algoSystem(t)
	for _, d := range doors {
		t.Run(d.name, func(t *testing.T) {
			out, code := s.sshDoorRun(t, d, []string{"-v"}, "echo order-ok")
			want := "kex: server->client cipher: chacha20-poly1305@openssh.com"
			if code != 0 || !strings.Contains(out, "order-ok") || !strings.Contains(out, want) {
				t.Fatalf("ssh -v: exit %d, want %q in\n%s", code, want, tail(out, 40))
			}
			if out, code := s.sshDoorRun(t, d, []string{"-c", "aes128-cbc"}, "true"); code != 255 {
				t.Fatalf("ssh -c aes128-cbc: exit %d %q, want refused", code, out)
			}
			deadline := time.Now().Add(10 * time.Second)
			line := ""
			for line == "" {
				if time.Now().After(deadline) {
					t.Fatalf("no info line for the failed handshake:\n%s", tail(d.logs(), 20))
				}
				time.Sleep(50 * time.Millisecond)
				line = handshakeFailLogged(d.logs(), "no common algorithm")
			}
			t.Logf("logged: %s", line)
		})
	}
}

// handshakeFailLogged is log's first info-level "ssh handshake failed"
// line whose reason contains reason, or "".
func handshakeFailLogged(log, reason string) string {
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "ssh handshake failed") && strings.Contains(l, reason) &&
			(strings.Contains(l, `"level":"info"`) || strings.Contains(l, " INF ")) {
			return l
		}
	}
	return ""
}

// paramikoScript logs in with a key file, runs a command and round-trips
// a file over sftp, printing both and the cipher paramiko chose (stderr).
const paramikoScript = `
import sys, paramiko
host, port, user, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
c = paramiko.SSHClient()
c.set_missing_host_key_policy(paramiko.AutoAddPolicy())
c.connect(host, port=port, username=user, pkey=paramiko.Ed25519Key.from_private_key_file(key),
          look_for_keys=False, allow_agent=False, timeout=30, banner_timeout=30, auth_timeout=30)
fin, out, err = c.exec_command("echo paramiko-ok; id -un", timeout=30)
data, code = out.read().decode(), out.channel.recv_exit_status()
cipher = c.get_transport().remote_cipher
# Ansible's paramiko plugin moves files over sftp.
import io
sftp = c.open_sftp()
sftp.putfo(io.BytesIO(b"via paramiko sftp\n"), "paramiko.txt")
got = io.BytesIO()
sftp.getfo("paramiko.txt", got)
data += got.getvalue().decode()
sftp.close()
for f in (fin, out, err):
    f.close()
c.close()
sys.stdout.write(data)
sys.stderr.write("cipher " + cipher + "\n")
sys.exit(code)
`

// TestSSHParamiko: Debian 12's python3-paramiko (2.12: AES-CTR, no GCM,
// no chacha20) runs a command and moves a file over sftp through both
// doors. Before: "Incompatible
// ssh server (no acceptable ciphers)".
func TestSSHParamiko(t *testing.T) {
	// Debian's python3, not whatever python3 is first on PATH (pyenv).
	const python = "/usr/bin/python3"
	if err := exec.Command(python, "-c", "import paramiko").Run(); err != nil {
		t.Fatalf("python3-paramiko not installed (scripts/deps.sh installs it): %v", err)
	}
	s, doors := algoSystem(t)
	script := filepath.Join(t.TempDir(), "login.py")
	if err := os.WriteFile(script, []byte(paramikoScript), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, d := range doors {
		t.Run(d.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, python, script, "127.0.0.1", d.port, d.user, s.key.Private)
			var stderr syncBuffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil || string(out) != "paramiko-ok\ntl-user\nvia paramiko sftp\n" {
				t.Fatalf("paramiko: %v, output %q, stderr:\n%s\nlog:\n%s", err, out, tail(stderr.String(), 20), tail(d.logs(), 10))
			}
			t.Logf("paramiko %s", strings.TrimSpace(stderr.String()))
		})
	}
}

// TestSSHCurlSFTP: Debian's curl (libssh2 1.10: AES-CTR, hmac-sha2 without
// ETM) fetches a file over sftp:// through both doors. Before: "Failure
// establishing ssh session" (key exchange found no common cipher).
func TestSSHCurlSFTP(t *testing.T) {
	if out, err := exec.Command("curl", "-V").Output(); err != nil || !strings.Contains(string(out), "sftp") {
		t.Fatalf("curl without sftp (Debian's curl has libssh2): %v %q", err, out)
	}
	s, doors := algoSystem(t)
	body := fmt.Sprintf("sftp via libssh2 %d\n", time.Now().UnixNano())
	p := s.SandboxPath("/home/tl-user/curl-sftp.txt")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p, int(s.uid), int(s.uid)); err != nil {
		t.Fatal(err)
	}
	pub := filepath.Join(t.TempDir(), "id.pub")
	if err := os.WriteFile(pub, []byte(s.key.Public+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, d := range doors {
		t.Run(d.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			url := "sftp://" + d.user + "@127.0.0.1:" + d.port + "/home/tl-user/curl-sftp.txt"
			// -k: no known_hosts check (the host keys are throwaway).
			cmd := exec.CommandContext(ctx, "curl", "-sS", "-k", "--key", s.key.Private, "--pubkey", pub, url)
			var stderr syncBuffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil || string(out) != body {
				t.Fatalf("curl %s: %v, got %q want %q, stderr:\n%s\nlog:\n%s", url, err, out, body, stderr.String(), tail(d.logs(), 10))
			}
		})
	}
}

// TestSSHHandshakeFailLogBounded: a peer whose KEXINIT names 100 KB of
// made-up ciphers is refused, and each door logs one line for it whose
// reason is cut to a bound (x/crypto's error quotes the peer's lists).
func TestSSHHandshakeFailLogBounded(t *testing.T) {
	_, doors := algoSystem(t)
	for _, d := range doors {
		t.Run(d.name, func(t *testing.T) {
			c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", d.port), 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			if _, err := c.Write(append([]byte("SSH-2.0-hostile\r\n"), hugeKexInit(100_000)...)); err != nil {
				t.Fatal(err)
			}
			// The server answers with its own KEXINIT, then closes.
			if _, err := io.Copy(io.Discard, c); err != nil {
				t.Fatalf("the server did not close: %v", err)
			}
			var lines []string
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
				lines = nil
				for _, l := range strings.Split(d.logs(), "\n") {
					if strings.Contains(l, "ssh handshake failed") && strings.Contains(l, "hostile-cipher") {
						lines = append(lines, l)
					}
				}
				if len(lines) > 0 || time.Now().After(deadline) {
					break
				}
			}
			if len(lines) != 1 || len(lines[0]) > 2048 {
				t.Fatalf("want one line of at most 2 KiB, got %d lines (first %d bytes)", len(lines), len(strings.Join(lines, "")))
			}
		})
	}
}

// hugeKexInit is an unencrypted SSH_MSG_KEXINIT packet (RFC 4253 7.1)
// with sane key exchange and host key lists and cipher lists of about n
// bytes of names nobody implements.
func hugeKexInit(n int) []byte {
	var names []string
	for i := 0; len(names)*20 < n; i++ {
		names = append(names, fmt.Sprintf("hostile-cipher-%05d", i))
	}
	ciphers := strings.Join(names, ",")
	lists := []string{"curve25519-sha256", "ssh-ed25519", ciphers, ciphers,
		"hmac-sha2-256", "hmac-sha2-256", "none", "none", "", ""}
	payload := []byte{20} // SSH_MSG_KEXINIT
	payload = append(payload, make([]byte, 16)...)
	for _, l := range lists {
		payload = binary.BigEndian.AppendUint32(payload, uint32(len(l)))
		payload = append(payload, l...)
	}
	payload = append(payload, 0, 0, 0, 0, 0) // first_kex_packet_follows, reserved
	pad := 8 - (len(payload)+5)%8
	if pad < 4 {
		pad += 8
	}
	pkt := binary.BigEndian.AppendUint32(nil, uint32(1+len(payload)+pad))
	pkt = append(pkt, byte(pad))
	pkt = append(pkt, payload...)
	return append(pkt, make([]byte, pad)...)
}
