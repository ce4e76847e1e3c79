package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// OpenSSH is a throwaway OpenSSH sshd on loopback: the yardstick that the
// benchmarks compare our data paths with, and a reference for tests that
// check we behave as OpenSSH does. It logs in as the current user (root
// here) with a key made for it; nothing of the machine's own sshd config
// or keys is used or changed.
type OpenSSH struct {
	Port    int
	Key     string // private key for the client (-i)
	User    string
	Dir     string
	cmd     *exec.Cmd
	done    chan struct{}
	logPath string
}

// StartOpenSSH starts sshd on a free loopback port and stops it (by pid)
// at cleanup.
func StartOpenSSH(t TB) *OpenSSH {
	t.Helper()
	sshd := "/usr/sbin/sshd"
	if _, err := os.Stat(sshd); err != nil {
		t.Fatalf("OpenSSH server not installed (scripts/deps.sh installs openssh-server): %v", err)
	}
	dir := t.TempDir()
	o := &OpenSSH{Dir: dir, Key: filepath.Join(dir, "id_ed25519"), logPath: filepath.Join(dir, "sshd.log")}
	for _, args := range [][]string{
		{"-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, "host_ed25519")},
		{"-q", "-t", "ed25519", "-N", "", "-f", o.Key},
	} {
		if out, err := exec.Command("ssh-keygen", args...).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen: %v: %s", err, out)
		}
	}
	pub, err := os.ReadFile(o.Key + ".pub")
	if err != nil {
		t.Fatalf("read key: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600); err != nil {
		t.Fatalf("authorized_keys: %v", err)
	}
	addr := freeAddr(t)
	_, ps, _ := strings.Cut(addr, ":")
	o.Port, _ = strconv.Atoi(ps)
	u := os.Getenv("USER")
	if u == "" {
		u = "root"
	}
	o.User = u
	sftp := "/usr/lib/openssh/sftp-server"
	conf := fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s/host_ed25519
PidFile %s/sshd.pid
AuthorizedKeysFile %s/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
PrintMotd no
AllowTcpForwarding yes
AllowStreamLocalForwarding yes
AllowAgentForwarding yes
StreamLocalBindUnlink yes
Subsystem sftp %s
LogLevel ERROR
`, o.Port, dir, dir, dir, sftp)
	cfgPath := filepath.Join(dir, "sshd_config")
	if err := os.WriteFile(cfgPath, []byte(conf), 0o600); err != nil {
		t.Fatalf("sshd_config: %v", err)
	}
	// sshd insists on its privilege-separation folder.
	_ = os.MkdirAll("/run/sshd", 0o755)
	o.cmd = exec.Command(sshd, "-D", "-e", "-f", cfgPath)
	logf, _ := os.Create(o.logPath)
	o.cmd.Stdout, o.cmd.Stderr = logf, logf
	o.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := o.cmd.Start(); err != nil {
		t.Fatalf("start sshd: %v", err)
	}
	o.done = make(chan struct{})
	go func() { _ = o.cmd.Wait(); logf.Close(); close(o.done) }()
	t.Cleanup(o.Stop)
	waitTCP(t, addr, 10*time.Second)
	return o
}

// Stop ends sshd (its pid only; sessions it forked end with their clients).
func (o *OpenSSH) Stop() {
	if o.cmd == nil || o.cmd.Process == nil {
		return
	}
	_ = o.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-o.done:
	case <-time.After(5 * time.Second):
		_ = o.cmd.Process.Kill()
		<-o.done
	}
}

// ClientArgs are the ssh options that reach this server (before the
// destination): key, port, no host-key prompts, no config files.
func (o *OpenSSH) ClientArgs() []string {
	return []string{"-F", "/dev/null", "-i", o.Key, "-p", strconv.Itoa(o.Port),
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "BatchMode=yes", "-o", "LogLevel=ERROR"}
}

// Dest is user@127.0.0.1.
func (o *OpenSSH) Dest() string { return o.User + "@127.0.0.1" }
