package integration

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
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

// statOf is path's mode and owner as this machine sees it: "0644 0:0".
func statOf(t *testing.T, path string) string {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fmt.Sprintf("%04o %d:%d", st.Mode&0o7777, st.Uid, st.Gid)
}

// sudoWorks checks, through the API as tl-user, that sudo still lets the
// user in: it reads /etc/passwd (the user must resolve) and the drop-in
// (root-owned, not writable by others).
func sudoWorks(t *testing.T, s *System) {
	t.Helper()
	r := run(t, s, map[string]any{"command": "sudo", "args": []string{"-n", "id", "-u"}})
	if strings.Join(r.stdout, "") != "0" {
		t.Fatalf("sudo -n id -u as tl-user: stdout %q stderr %q end %v", r.stdout, r.stderr, r.end)
	}
}

// TestFilesOverwriteKeepsOwner: PUT over a file the image owns keeps its
// owner, group and mode; a new file is tl-user's. The sandbox's /etc is
// its own overlay copy, so the real /etc/passwd and sudoers drop-in are
// fair game.
func TestFilesOverwriteKeepsOwner(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{})
	ensureUser(t, s)
	uid := sandboxUID(t, s)
	sudoWorks(t, s)

	scratch := s.SandboxPath("/etc/tl-scratch.conf")
	if err := os.WriteFile(scratch, []byte("old\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(scratch, 0o755|os.ModeSetuid); err != nil {
		t.Fatal(err)
	}
	s.JSON("PUT", filePath("/etc/tl-scratch.conf"), "new\n", 204, nil)
	if got := statOf(t, scratch); got != "4755 0:0" {
		t.Errorf("overwritten root file: %s, want 4755 0:0", got)
	}
	if data, _ := os.ReadFile(scratch); string(data) != "new\n" {
		t.Errorf("overwritten content %q", data)
	}

	s.JSON("PUT", filePath("/etc/tl-new.conf"), "x", 204, nil)
	if got, want := statOf(t, s.SandboxPath("/etc/tl-new.conf")), fmt.Sprintf("0644 %d:%d", uid, uid); got != want {
		t.Errorf("new file: %s, want %s (tl-user's)", got, want)
	}

	// The issue's own steps: PUT /etc/passwd (here its own bytes plus a
	// comment-free extra user) and the sudoers drop-in, then sudo.
	for _, c := range []struct{ path, mode, add string }{
		{"/etc/passwd", "0644 0:0", "tl-extra:x:4242:4242::/nonexistent:/usr/sbin/nologin\n"},
		{"/etc/sudoers.d/tl-user", "0440 0:0", "# kept by the test\n"},
	} {
		resp := s.Do("GET", filePath(c.path), nil)
		old, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || len(old) == 0 {
			t.Fatalf("GET %s: %d %q", c.path, resp.StatusCode, old)
		}
		s.JSON("PUT", filePath(c.path), string(old)+c.add, 204, nil)
		if got := statOf(t, s.SandboxPath(c.path)); got != c.mode {
			t.Errorf("%s after PUT: %s, want %s", c.path, got, c.mode)
		}
	}
	sudoWorks(t, s)
}

// TestFilesKernelAndMountedFiles: /proc files are written in place (or
// refused with a clear code), never "no such file"; a bind-mounted file
// (a container's /etc/hosts) is filled in place.
func TestFilesKernelAndMountedFiles(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{})
	ensureUser(t, s)

	// The sandbox has its own UTS namespace: its host name is its own.
	resp := s.Do("PUT", filePath("/proc/sys/kernel/hostname"), "tl-renamed\n")
	body, _ := io.ReadAll(resp.Body)
	switch resp.StatusCode {
	case http.StatusNoContent:
		if out, err := s.Exec("hostname"); err != nil || strings.TrimSpace(out) != "tl-renamed" {
			t.Fatalf("host name after PUT /proc/sys/kernel/hostname: %q %v", out, err)
		}
	case http.StatusForbidden: // a runtime that mounts /proc/sys read-only
		if !strings.Contains(string(body), "READ_ONLY_FILE_SYSTEM") {
			t.Fatalf("PUT /proc/sys/kernel/hostname: 403 %s", body)
		}
	default:
		t.Fatalf("PUT /proc/sys/kernel/hostname: %d %s", resp.StatusCode, body)
	}
	// ns_last_pid is the sandbox's pid namespace's; "abc" is no pid.
	if resp.StatusCode == http.StatusNoContent {
		s.WantError(t, "PUT", filePath("/proc/sys/kernel/ns_last_pid"), "abc", 400, "WRITE_REFUSED")
	}
	s.WantError(t, "PUT", filePath("/proc/sys/kernel/tl-no-such-sysctl"), "1", 400, "CANNOT_CREATE")

	// A FIFO (a device alike) is neither written into nor replaced. The
	// sandbox's /tmp is its own; its /dev is this machine's: not used here.
	if out, err := s.Exec("mkfifo", "/tmp/tl-fifo"); err != nil {
		t.Fatalf("mkfifo: %v %s", err, out)
	}
	s.WantError(t, "PUT", filePath("/tmp/tl-fifo"), "x", 400, "NOT_A_REGULAR_FILE")
	if out, err := s.Exec("test", "-p", "/tmp/tl-fifo"); err != nil {
		t.Fatalf("FIFO replaced by the PUT: %v %s", err, out)
	}

	if out, err := s.Exec("sh", "-c", "echo old > /tmp/tl-src && : > /etc/tl-bound && mount --bind /tmp/tl-src /etc/tl-bound"); err != nil {
		t.Fatalf("bind mount in the sandbox: %v %s", err, out)
	}
	s.JSON("PUT", filePath("/etc/tl-bound"), "new\n", 204, nil)
	if out, err := s.Exec("cat", "/etc/tl-bound"); err != nil || out != "new\n" {
		t.Fatalf("bind-mounted file after PUT: %q %v", out, err)
	}
}

// devTools is what a developer or an AI agent reaches for first in the
// full sandbox image (issue: python3 with pip and venv, a C toolchain,
// editors, fetchers, archivers, terminals).
var devTools = []string{"python3", "pip3", "gcc", "g++", "make", "vim", "nano", "wget", "curl", "nc", "jq",
	"unzip", "zip", "file", "ps", "less", "git", "ssh", "rsync", "tmux", "screen", "sudo", "locale"}

// devCheck is run as tl-user in /workspace; each line it prints is a fact
// the test checks.
const devCheck = `for c in ` + "$TOOLS" + `; do command -v $c >/dev/null || echo missing:$c; done
echo pwd:$(pwd) owner:$(stat -c %U /workspace)
python3 -m venv /tmp/venv && /tmp/venv/bin/pip --version >/dev/null && echo venv-ok
printf 'int main(void){return 0;}\n' > cc.c && gcc cc.c -o cc && ./cc && echo cc-ok
apt-cache show hello >/dev/null 2>&1 && echo apt-lists-ok
locale -a | grep -qix 'en_US.utf8' && locale -a | grep -qix 'C.utf8' && echo locales-ok
echo lang:$LANG`

// TestImageDev: the default sandbox image is a place to work (the tools,
// apt lists present, UTF-8 locales, /workspace), and the slim variant
// is the same agent set-up without them.
func TestImageDev(t *testing.T) {
	RequireRoot(t)
	for _, c := range []struct {
		target string
		want   []string
	}{
		{"sandbox", []string{"pwd:/workspace owner:tl-user", "venv-ok", "cc-ok", "apt-lists-ok", "locales-ok", "lang:C.UTF-8"}},
		{"sandbox-slim", []string{"pwd:/workspace owner:tl-user", "missing:python3", "missing:gcc", "lang:C.UTF-8"}},
	} {
		t.Run(c.target, func(t *testing.T) {
			img := buildImage(t, c.target)
			size, _ := podman(t, "image", "inspect", "--format", "{{.Size}}", img)
			t.Logf("%s image size: %s bytes", c.target, size)
			s := Start(t, Options{NoAgent: true})
			ct := runContainer(t, s, img, nil)
			ct.serving(s)
			r := run(t, s, map[string]any{"command": "bash", "args": []string{"-c", devCheck},
				"working_dir": "/workspace", "env": map[string]string{"TOOLS": strings.Join(devTools, " ")}})
			got := strings.Join(r.stdout, "\n")
			for _, w := range c.want {
				if !strings.Contains("\n"+got+"\n", "\n"+w+"\n") {
					t.Errorf("no line %q in:\n%s\nstderr: %s", w, got, strings.Join(r.stderr, "\n"))
				}
			}
			if c.target == "sandbox" && strings.Contains(got, "missing:") {
				t.Errorf("tools missing from the full image:\n%s", got)
			}
			ct.stop()
		})
	}
}
