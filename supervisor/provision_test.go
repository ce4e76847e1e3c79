package supervisor

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/rs/zerolog"
)

// layout is a synthetic image root: path -> content ("/" suffix: folder).
type layout map[string]string

var debianLike = layout{
	"etc/passwd":           "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
	"etc/shadow":           "root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n",
	"etc/group":            "root:x:0:\ndaemon:x:1:\nsudo:x:27:\nnogroup:x:65534:\n",
	"etc/gshadow":          "root:*::\ndaemon:*::\nsudo:*::\nnogroup:*::\n",
	"etc/sudoers":          "Defaults\tenv_reset\nroot\tALL=(ALL:ALL) ALL\n%sudo\tALL=(ALL:ALL) ALL\n@includedir /etc/sudoers.d\n",
	"etc/sudoers.d/README": "drop-ins\n",
	"etc/skel/.bashrc":     "# bashrc\n",
	"etc/skel/.profile":    "# profile\n",
	"etc/skel/.config/":    "",
	"etc/hostname":         "buildkitsandbox\n",
	"etc/hosts":            "127.0.0.1\tlocalhost\n127.0.1.1\tbuildkitsandbox\n",
	"bin/bash":             "#!fake\n",
	"bin/sh":               "#!fake\n",
	"home/":                "",
}

// ubuntuLike has the image's own user at uid and gid 1000.
var ubuntuLike = with(debianLike, layout{
	"etc/passwd":  debianLike["etc/passwd"] + "ubuntu:x:1000:1000:Ubuntu:/home/ubuntu:/bin/bash\n",
	"etc/shadow":  debianLike["etc/shadow"] + "ubuntu:!:19000:0:99999:7:::\n",
	"etc/group":   "root:x:0:\nsudo:x:27:ubuntu\nubuntu:x:1000:\n",
	"etc/gshadow": "root:*::\nsudo:*::ubuntu\nubuntu:!::\n",
})

// alpineLike: shadow but no gshadow, wheel but no sudo group, no sudo
// installed, busybox sh only, no /etc/hosts line for the host.
var alpineLike = layout{
	"etc/passwd": "root:x:0:0:root:/root:/bin/ash\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n",
	"etc/shadow": "root:*::0:::::\nnobody:!::0:::::\n",
	"etc/group":  "root:x:0:root\nwheel:x:10:root\nnogroup:x:65533:\nnobody:x:65534:\n",
	"etc/hosts":  "127.0.0.1\tlocalhost localhost.localdomain\n",
	"bin/sh":     "#!fake\n",
}

// busyboxLike: passwd and group only, no shadow, no skel, no hosts, no
// home folder, no final newline in group.
var busyboxLike = layout{
	"etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
	"etc/group":  "root:x:0:",
	"bin/sh":     "#!fake\n",
}

// noDropIns has sudo whose sudoers reads no sudoers.d.
var noDropIns = with(debianLike, layout{
	"etc/sudoers":          "root ALL=(ALL) ALL",
	"etc/sudoers.d/README": "",
})

// existingUser already has tl-user (other ids) and a root-owned home.
var existingUser = with(debianLike, layout{
	"etc/passwd":         debianLike["etc/passwd"] + "tl-user:x:1500:1500::/home/tl-user:/bin/sh\n",
	"etc/group":          debianLike["etc/group"] + "tl-user:x:1500:\n",
	"home/tl-user/":      "",
	"home/tl-user/.keep": "x\n",
	"workspace/":         "", // made by the image, owned by root
})

// emptyEtc is an image FROM scratch with a shell and an /etc folder.
var emptyEtc = layout{"etc/": "", "bin/sh": "#!fake\n"}

func with(base, over layout) layout {
	out := layout{}
	for k, v := range base {
		out[k] = v
	}
	for k, v := range over {
		if v == "" && !strings.HasSuffix(k, "/") {
			delete(out, k)
			continue
		}
		out[k] = v
	}
	return out
}

func build(t *testing.T, l layout) string {
	t.Helper()
	root := t.TempDir()
	for p, content := range l {
		full := filepath.Join(root, p)
		if strings.HasSuffix(p, "/") {
			if err := os.MkdirAll(full, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		mode := os.FileMode(0o644)
		if strings.Contains(p, "shadow") || strings.Contains(p, "sudoers") {
			mode = 0o440
		}
		if err := os.WriteFile(full, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// snapshot is every file's bytes, mode and owner under root.
func snapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		v := fmt.Sprintf("%v %d:%d", fi.Mode(), st.Uid, st.Gid)
		if fi.Mode().IsRegular() {
			data, _ := os.ReadFile(p)
			v += " " + string(data)
		}
		out[strings.TrimPrefix(p, root)] = v
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func requireRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown the user's files")
	}
}

func TestProvisionLayouts(t *testing.T) {
	requireRoot(t)
	opts := ProvisionOptions{User: "tl-user", UID: 1000, GID: 1000, Hostname: "tl-sbx"}
	cases := []struct {
		name            string
		l               layout
		uid, gid        int
		shell           string
		shadow, gshadow bool
		sudoGID         string
		skel            bool
	}{
		{"debian", debianLike, 1000, 1000, "/bin/bash", true, true, "27", true},
		{"ubuntu uid taken", ubuntuLike, 1001, 1001, "/bin/bash", true, true, "27", true},
		{"alpine", alpineLike, 1000, 1000, "/bin/sh", true, false, "27", false},
		{"busybox", busyboxLike, 1000, 1000, "/bin/sh", false, false, "27", false},
		{"sudoers without includedir", noDropIns, 1000, 1000, "/bin/bash", true, true, "27", true},
		{"existing user", existingUser, 1500, 1500, "/bin/sh", true, true, "27", false},
		{"empty etc", emptyEtc, 1000, 1000, "/bin/sh", false, false, "27", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := build(t, c.l)
			res, err := Provision(root, opts, zerolog.New(zerolog.NewTestWriter(t)))
			if err != nil {
				t.Fatalf("provision: %v", err)
			}
			if res.UID != c.uid || res.GID != c.gid || res.Shell != c.shell || res.Home != "/home/tl-user" {
				t.Fatalf("got %+v, want uid %d gid %d shell %s", res, c.uid, c.gid, c.shell)
			}
			read := func(p string) string {
				data, _ := os.ReadFile(filepath.Join(root, p))
				return string(data)
			}
			checkAccounts(t, read, c.uid, c.gid, c.shell, c.l)
			if got := read("etc/shadow"); c.shadow != strings.Contains(got, "\ntl-user:!:") {
				t.Errorf("shadow entry: want %v, got:\n%s", c.shadow, got)
			}
			if got := read("etc/gshadow"); c.gshadow != strings.Contains(got, "\ntl-user:!::") {
				t.Errorf("gshadow entry: want %v, got:\n%s", c.gshadow, got)
			}
			if c.gshadow && !hasLinePrefix(read("etc/gshadow"), "sudo:*::") {
				t.Errorf("gshadow lacks sudo membership:\n%s", read("etc/gshadow"))
			}
			if _, err := os.Stat(filepath.Join(root, "etc/gshadow")); c.l["etc/gshadow"] == "" && err == nil {
				t.Errorf("gshadow created where the image had none")
			}
			checkHome(t, root, c.uid, c.gid, c.skel)
			checkWorkspace(t, root, c.uid, c.gid)
			checkSudoers(t, root)
			if read("etc/hostname") != "tl-sbx\n" || !strings.Contains(read("etc/hosts"), "127.0.1.1\ttl-sbx\n") ||
				!strings.Contains(read("etc/hosts"), "localhost") || strings.Contains(read("etc/hosts"), "buildkitsandbox") {
				t.Errorf("host files: hostname %q hosts %q", read("etc/hostname"), read("etc/hosts"))
			}

			before := snapshot(t, root)
			res2, err := Provision(root, opts, zerolog.New(zerolog.NewTestWriter(t)))
			if err != nil {
				t.Fatalf("second provision: %v", err)
			}
			if len(res2.Changed) != 0 || res2.UID != res.UID || res2.GID != res.GID {
				t.Errorf("second run changed %v (uid %d gid %d)", res2.Changed, res2.UID, res2.GID)
			}
			after := snapshot(t, root)
			for k, v := range before {
				if after[k] != v {
					t.Errorf("second run changed %s:\n%s\n->\n%s", k, v, after[k])
				}
			}
			for k := range after {
				if _, ok := before[k]; !ok {
					t.Errorf("second run created %s", k)
				}
			}
		})
	}
}

func hasLinePrefix(s, prefix string) bool {
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) && strings.Contains(l, "tl-user") {
			return true
		}
	}
	return false
}

func checkAccounts(t *testing.T, read func(string) string, uid, gid int, shell string, l layout) {
	t.Helper()
	pw := read("etc/passwd")
	if !strings.Contains(pw, fmt.Sprintf("tl-user:x:%d:%d:", uid, gid)) || !strings.Contains(pw, ":/home/tl-user:"+shell+"\n") {
		t.Errorf("passwd:\n%s", pw)
	}
	if !strings.HasPrefix(pw, "root:x:0:0:") {
		t.Errorf("passwd lost or lacks root:\n%s", pw)
	}
	if old := l["etc/passwd"]; old != "" && !strings.HasPrefix(pw, old) {
		t.Errorf("existing passwd entries rewritten:\n%s", pw)
	}
	gr := read("etc/group")
	if !strings.Contains(gr, fmt.Sprintf(":%d:", gid)) || !hasLinePrefix(gr, "sudo:x:") {
		t.Errorf("group:\n%s", gr)
	}
	if strings.Count(gr, "\ntl-user:") > 1 || strings.Count(gr, "sudo:") != 1 {
		t.Errorf("duplicate group entries:\n%s", gr)
	}
}

func checkHome(t *testing.T, root string, uid, gid int, skel bool) {
	t.Helper()
	home := filepath.Join(root, "home/tl-user")
	fi, err := os.Stat(home)
	if err != nil || !fi.IsDir() {
		t.Fatalf("home: %v", err)
	}
	if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != uid || int(st.Gid) != gid {
		t.Errorf("home owned by %d:%d", st.Uid, st.Gid)
	}
	if !skel {
		return
	}
	for _, f := range []string{".bashrc", ".profile", ".config"} {
		fi, err := os.Lstat(filepath.Join(home, f))
		if err != nil {
			t.Errorf("home lacks %s from skel: %v", f, err)
			continue
		}
		if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != uid {
			t.Errorf("%s owned by %d", f, st.Uid)
		}
	}
}

func checkWorkspace(t *testing.T, root string, uid, gid int) {
	t.Helper()
	fi, err := os.Lstat(filepath.Join(root, "workspace"))
	if err != nil || !fi.IsDir() {
		t.Fatalf("workspace: %v %v", fi, err)
	}
	if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != uid || int(st.Gid) != gid || fi.Mode().Perm() != 0o755 {
		t.Errorf("workspace %v owned by %d:%d, want %d:%d 0755", fi.Mode(), st.Uid, st.Gid, uid, gid)
	}
}

// TestProvisionWorkspaceLeftAlone: a /workspace the image gave to someone
// else, or made a symlink, is the image's choice.
func TestProvisionWorkspaceLeftAlone(t *testing.T) {
	requireRoot(t)
	opts := ProvisionOptions{User: "tl-user", UID: 1000, GID: 1000}
	t.Run("owned by another user", func(t *testing.T) {
		root := build(t, debianLike)
		ws := filepath.Join(root, "workspace")
		if err := os.Mkdir(ws, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(ws, 2000, 2000); err != nil {
			t.Fatal(err)
		}
		if _, err := Provision(root, opts, zerolog.New(zerolog.NewTestWriter(t))); err != nil {
			t.Fatalf("provision: %v", err)
		}
		fi, _ := os.Stat(ws)
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 2000 || fi.Mode().Perm() != 0o700 {
			t.Errorf("workspace changed: %v %d", fi.Mode(), st.Uid)
		}
	})
	t.Run("symlink", func(t *testing.T) {
		root := build(t, debianLike)
		if err := os.Symlink("/home/tl-user", filepath.Join(root, "workspace")); err != nil {
			t.Fatal(err)
		}
		if _, err := Provision(root, opts, zerolog.New(zerolog.NewTestWriter(t))); err != nil {
			t.Fatalf("provision: %v", err)
		}
		if fi, err := os.Lstat(filepath.Join(root, "workspace")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
			t.Errorf("symlink replaced: %v %v", fi, err)
		}
	})
	t.Run("a file", func(t *testing.T) {
		root := build(t, with(debianLike, layout{"workspace": "x\n"}))
		if _, err := Provision(root, opts, zerolog.New(zerolog.NewTestWriter(t))); err == nil || !strings.Contains(err.Error(), "/workspace") {
			t.Errorf("want an error naming /workspace, got %v", err)
		}
	})
}

func checkSudoers(t *testing.T, root string) {
	t.Helper()
	p := filepath.Join(root, "etc/sudoers.d/tl-user")
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatalf("sudoers drop-in: %v", err)
	}
	data, _ := os.ReadFile(p)
	if fi.Mode().Perm() != 0o440 || string(data) != "tl-user ALL=(ALL) NOPASSWD:ALL\n" {
		t.Errorf("drop-in %v %q", fi.Mode(), data)
	}
	if main, err := os.ReadFile(filepath.Join(root, "etc/sudoers")); err == nil && !includesDropIns(string(main)) {
		t.Errorf("sudoers includes no drop-ins:\n%s", main)
	}
}

func TestProvisionNoEtc(t *testing.T) {
	res, err := Provision(t.TempDir(), ProvisionOptions{User: "tl-user", UID: 1000, GID: 1000, Hostname: "tl-sbx"}, zerolog.Nop())
	if !errors.Is(err, ErrNoEtc) || len(res.Changed) != 0 {
		t.Fatalf("err %v changed %v, want ErrNoEtc and nothing", err, res.Changed)
	}
}

// TestFileLockStale takes a lock left behind by a process that is gone,
// and waits for none held by a live one beyond the test.
func TestFileLockStale(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "passwd")
	if err := os.WriteFile(path+".lock", []byte("999999999"), 0o600); err != nil {
		t.Fatal(err)
	}
	unlock, err := fileLock(path)
	if err != nil {
		t.Fatalf("stale lock not taken: %v", err)
	}
	if data, _ := os.ReadFile(path + ".lock"); string(data) != fmt.Sprint(os.Getpid()) {
		t.Fatalf("lock holds %q", data)
	}
	unlock()
	if _, err := os.Stat(path + ".lock"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("unlock left the lock: %v", err)
	}
}

func TestWithHostLine(t *testing.T) {
	cases := []struct{ in, want string }{
		{"", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\ttl-sbx\n"},
		{"127.0.0.1 localhost\n", "127.0.0.1 localhost\n127.0.1.1\ttl-sbx\n"},
		{"127.0.0.1 localhost\n127.0.1.1 old # build\n::1 x\n", "127.0.0.1 localhost\n127.0.1.1\ttl-sbx\n::1 x\n"},
		{"10.0.0.2 tl-sbx\n", "10.0.0.2 tl-sbx\n"},
	}
	for _, c := range cases {
		got, _ := withHostLine(c.in, "tl-sbx")
		if got != c.want {
			t.Errorf("withHostLine(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}
