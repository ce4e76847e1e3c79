package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// The sandbox's file system as a user meets it: /workspace, and files
// API writes over files the image owns.

// TestWorkspace does what the API's own examples do: scp a script into
// /workspace through the proxy's SSH front door, then run it from a PTY
// whose working_dir is /workspace. Both need the folder, owned by tl-user,
// made by the agent's provisioning alone.
func TestWorkspace(t *testing.T) {
	RequireRoot(t)
	key := NewSSHKey(t, "workspace-test")
	s := Start(t, Options{SSHKeys: WriteAuthorizedKeys(t, key.Public)})
	ensureUser(t, s)
	uid := sandboxUID(t, s)
	if got := ownerOf(t, s.SandboxPath("/workspace")); got != uid {
		t.Fatalf("/workspace owned by %d, want tl-user (%d)", got, uid)
	}

	src := filepath.Join(t.TempDir(), "script.sh")
	if err := os.WriteFile(src, []byte("echo ran-in-$(pwd)-as-$(id -un)\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	scp := append(append([]string{"-P", s.SSHPort()}, s.SSHOpts(key.Private)...), src, s.SSHDest()+":/workspace/")
	if out, err := exec.Command("scp", scp...).CombinedOutput(); err != nil {
		t.Fatalf("scp to /workspace/: %v %s", err, out)
	}
	if got := ownerOf(t, s.SandboxPath("/workspace/script.sh")); got != uid {
		t.Fatalf("scp'd file owned by %d, want tl-user (%d)", got, uid)
	}

	p := ptyCreate(t, s, map[string]any{"command": "/bin/sh", "working_dir": "/workspace", "rows": 24, "cols": 80})
	c := ptyDial(t, s, p)
	c.ready()
	c.input("sh script.sh\n")
	c.waitFor("ran-in-/workspace-as-tl-user", 10*time.Second)
	c.input("exit 0\n")
	c.waitClose(10 * time.Second)
}
