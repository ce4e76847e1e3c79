package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// SSHKey is a key pair made with ssh-keygen for a test or benchmark.
type SSHKey struct {
	Private string // path, for ssh -i
	Public  string // the authorized_keys line
}

// NewSSHKey makes an ed25519 key pair in a temp folder.
func NewSSHKey(t TB, comment string) SSHKey {
	t.Helper()
	p := filepath.Join(t.TempDir(), "id_ed25519")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", p).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v: %s", err, out)
	}
	pub, err := os.ReadFile(p + ".pub")
	if err != nil {
		t.Fatalf("read key: %v", err)
	}
	return SSHKey{Private: p, Public: strings.TrimSpace(string(pub))}
}

// WriteAuthorizedKeys writes the proxy's users' keys file: one line per
// entry, each "[options ]<public key>".
func WriteAuthorizedKeys(t TB, lines ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "authorized_keys")
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatalf("write keys: %v", err)
	}
	return p
}

// SSHArgs are the ssh options that reach the proxy's SSH front door with
// key (before the destination): no config files, no host-key prompts.
// scp and sftp take the port as -P; use SSHOpts for them.
func (s *System) SSHArgs(key string) []string {
	_, port, _ := strings.Cut(s.SSHAddr, ":")
	return append([]string{"-p", port}, s.SSHOpts(key)...)
}

// SSHOpts are SSHArgs without the port.
func (s *System) SSHOpts(key string) []string {
	return []string{"-F", "/dev/null", "-i", key, "-o", "IdentitiesOnly=yes",
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "BatchMode=yes", "-o", "LogLevel=ERROR"}
}

// SSHPort is the front door's port.
func (s *System) SSHPort() string {
	_, port, _ := strings.Cut(s.SSHAddr, ":")
	return port
}

// SSHDest is <sandbox>@127.0.0.1.
func (s *System) SSHDest() string { return s.SandboxID + "@127.0.0.1" }
