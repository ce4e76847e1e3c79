package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestFilesOwnerIsConfiguredUser: with no passwd entry for the sandbox
// user (provisioning off), the user resolved once at start is the
// configured --user with --uid/--gid, never a built-in 1000, and every
// door acts as it: written files belong to it, and a process whose
// request names no user runs as it.
func TestFilesOwnerIsConfiguredUser(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{AgentArgs: []string{"--provision=false", "--user", "tl-ghost", "--uid", "2345", "--gid", "2346"}})
	rule(t, s, "files belong to the configured uid:gid", func(t *testing.T) {
		s.JSON("PUT", filePath("/tmp/owned/by.txt"), "x", 204, nil)
		for _, p := range []string{"/tmp/owned", "/tmp/owned/by.txt"} {
			fi, err := os.Lstat(s.SandboxPath(p))
			if err != nil {
				t.Fatalf("stat %s: %v", p, err)
			}
			st := fi.Sys().(*syscall.Stat_t)
			if st.Uid != 2345 || st.Gid != 2346 {
				t.Fatalf("%s owned by %d:%d: files must belong to the configured uid:gid 2345:2346", p, st.Uid, st.Gid)
			}
		}
	})
	rule(t, s, "a process with no user runs as the configured uid:gid", func(t *testing.T) {
		r := run(t, s, map[string]any{"command": "sh", "args": []string{"-c", "echo $(id -u):$(id -g)"}})
		if len(r.stdout) != 1 || r.stdout[0] != "2345:2346" {
			t.Fatalf("ran as %v (exit %v): the default user must be the configured 2345:2346", r.stdout, r.end)
		}
	})
}

// TestSSHPortRouteUser: for an agent started with --user, the proxy logs
// in on a <port>-<sandbox> route as the sandbox's configured user, not
// tl-user.
func TestSSHPortRouteUser(t *testing.T) {
	RequireRoot(t)
	port := sshFreePort(t)
	key := NewSSHKey(t, "alice@test")
	s := Start(t, Options{
		SSHKeys:     WriteAuthorizedKeys(t, key.Public),
		SandboxUser: "tl-dev",
		AgentArgs:   []string{"--user", "tl-dev", "--uid", "2001", "--gid", "2001", "--ssh-listen", fmt.Sprintf("127.0.0.1:%d", port)},
	})
	if out, err := s.Exec("id", "tl-dev"); err != nil {
		t.Fatalf("tl-dev not provisioned: %v %s", err, out)
	}
	scan, err := exec.Command("ssh-keyscan", "-t", "ed25519", "-p", s.SSHPort(), "127.0.0.1").Output()
	if err != nil {
		t.Fatalf("ssh-keyscan: %v", err)
	}
	_, proxyKey, _ := strings.Cut(strings.TrimSpace(string(scan)), " ")
	dir := s.SandboxPath("/home/tl-dev/.ssh")
	keys := filepath.Join(dir, "authorized_keys")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keys, []byte(proxyKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{dir, keys} {
		if err := os.Chown(f, 2001, 2001); err != nil {
			t.Fatal(err)
		}
	}
	route := fmt.Sprintf("%d-%s@127.0.0.1", port, s.SandboxID)
	out, err := exec.Command("ssh", append(s.SSHArgs(key.Private), route, "whoami")...).CombinedOutput()
	if err != nil || string(out) != "tl-dev\n" {
		t.Fatalf("port route must log in as the sandbox's user tl-dev: %v %q", err, out)
	}
	r := run(t, s, map[string]any{"command": "sh", "args": []string{"-c", "echo $(id -un):$(id -u):$HOME"}})
	if len(r.stdout) != 1 || r.stdout[0] != "tl-dev:2001:/home/tl-dev" {
		t.Fatalf("a process with no user ran as %v: the default user must be --user tl-dev (2001)", r.stdout)
	}
}
