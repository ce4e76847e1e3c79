package supervisor

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// ProvisionOptions say whom and what Provision creates.
type ProvisionOptions struct {
	User     string // the sandbox user's name, tl-user
	UID, GID int    // ids wanted for a new user and its group
	Hostname string // empty: the host name is left alone
}

// Provisioned is what Provision found or decided.
type Provisioned struct {
	User    string   `json:"user"`
	UID     int      `json:"uid"`
	GID     int      `json:"gid"`
	Home    string   `json:"home"`
	Shell   string   `json:"shell"`
	Changed []string `json:"changed"` // files and folders written, as paths inside root
}

// SudoGroup is the group whose members the image's sudoers (Debian,
// Ubuntu) lets run anything; tl-user joins it, creating it when missing.
const SudoGroup = "sudo"

// ErrNoEtc and ErrReadOnly name the two ways an image cannot be
// provisioned at all; the agent logs them and serves what it can.
var (
	ErrNoEtc    = errors.New("no /etc in the root file system")
	ErrReadOnly = errors.New("/etc is read-only")
)

// Provision makes root ready for users: the sandbox user (passwd, shadow,
// group, gshadow where each exists), membership of group sudo, a home from
// /etc/skel, the shared Workspace folder, a sudoers drop-in, and the host
// name files. It edits the files
// natively (images without useradd work), under the usual locks, atomically,
// and only where something is missing: a second run changes nothing.
//
// root is "/" in a sandbox; tests pass a temp folder. The kernel host name
// is set only when root is "/".
func Provision(root string, o ProvisionOptions, log zerolog.Logger) (*Provisioned, error) {
	p := &provisioner{root: root, etc: filepath.Join(root, "etc"), o: o, log: log.With().Str("component", "provision").Logger()}
	p.res = &Provisioned{User: o.User}
	var errs []error
	if o.Hostname != "" && root == "/" {
		errs = append(errs, p.setHostname())
	}
	if fi, err := os.Stat(p.etc); err != nil || !fi.IsDir() {
		return p.res, errors.Join(append(errs, ErrNoEtc)...)
	}
	if err := unix.Access(p.etc, unix.W_OK); err != nil {
		if err == unix.EROFS {
			err = ErrReadOnly
		}
		return p.res, errors.Join(append(errs, fmt.Errorf("cannot provision: %w", err))...)
	}
	// The steps after the accounts touch different files and folders, and
	// the host files none of the accounts': they run side by side (on an
	// overlay each first write to a folder copies it up, 0.3-1 ms apiece
	// on the test VM, on the path from exec to serving).
	var hosts <-chan error
	if o.Hostname != "" {
		hosts = inBackground(p.hostFiles)
	}
	if o.User != "" {
		if err := p.accounts(); err != nil {
			errs = append(errs, fmt.Errorf("user %s: %w", o.User, err))
		} else {
			home, ws := inBackground(p.home), inBackground(p.workspace)
			errs = append(errs, p.sudoers(), <-home, <-ws)
		}
	}
	if hosts != nil {
		errs = append(errs, <-hosts)
	}
	return p.res, errors.Join(errs...)
}

// inBackground runs f on a goroutine of its own; its error comes on the
// channel.
func inBackground(f func() error) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	return ch
}

type provisioner struct {
	root, etc string
	o         ProvisionOptions
	log       zerolog.Logger
	res       *Provisioned
	mu        sync.Mutex // guards res.Changed: the steps run side by side
}

func (p *provisioner) changed(path string) {
	rel := "/" + strings.TrimPrefix(strings.TrimPrefix(path, p.root), "/")
	p.mu.Lock()
	defer p.mu.Unlock()
	p.res.Changed = append(p.res.Changed, rel)
}

// accounts adds the user, its group and its sudo membership to the four
// account databases, holding the locks shadow-utils holds.
func (p *provisioner) accounts() error {
	unlock, err := pwdLock(p.etc)
	if err != nil {
		return err
	}
	defer unlock()
	names := []string{"passwd", "shadow", "group", "gshadow"}
	files := map[string]*colonFile{}
	for _, n := range names {
		path := filepath.Join(p.etc, n)
		if f, err := readColonFile(path); err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		} else {
			files[n] = f
		}
	}
	pw, sh, gr, gs := files["passwd"], files["shadow"], files["group"], files["gshadow"]
	// An image with no passwd at all (FROM scratch plus a shell) gets the
	// minimal databases every tool expects: root and the sandbox user.
	if pw.missing {
		pw.add("root", "x", "0", "0", "root", "/root", p.shell())
	}
	if gr.missing {
		gr.add("root", "x", "0", "")
	}
	p.pickIDs(pw, gr)
	p.addEntries(pw, sh, gr, gs)
	for _, n := range names {
		f := files[n]
		if !f.changed || (f.missing && n != "passwd" && n != "group") {
			continue
		}
		unlockFile, err := fileLock(f.path)
		if err != nil {
			return err
		}
		err = writeAtomic(f.path, f.bytes(), 0o644)
		unlockFile()
		if err != nil {
			return fmt.Errorf("write %s: %w", f.path, err)
		}
		p.changed(f.path)
	}
	return nil
}

// pickIDs settles the user's uid, gid, home and shell: an existing user of
// that name is reused as it is; a uid or gid held by another name is left
// to its owner and the next free id is taken (renaming an image's own user,
// such as ubuntu or node, would break the image).
func (p *provisioner) pickIDs(pw, gr *colonFile) {
	r, name := p.res, p.o.User
	if fs, _ := pw.find(0, name); len(fs) >= 7 {
		r.UID, _ = strconv.Atoi(fs[2])
		r.GID, _ = strconv.Atoi(fs[3])
		r.Home, r.Shell = fs[5], fs[6]
		p.log.Info().Str("user", name).Int("uid", r.UID).Int("gid", r.GID).Msg("reusing existing user")
		return
	}
	r.Home, r.Shell = "/home/"+name, p.shell()
	uids := pw.ids(2)
	r.UID = freeID(uids, p.o.UID)
	if r.UID != p.o.UID {
		p.log.Warn().Str("user", name).Int("wanted_uid", p.o.UID).Str("held_by", uids[p.o.UID]).Int("uid", r.UID).
			Msg("uid taken by another user, left untouched; using the next free uid")
	}
	if fs, _ := gr.find(0, name); len(fs) >= 3 {
		r.GID, _ = strconv.Atoi(fs[2])
		p.log.Info().Str("group", name).Int("gid", r.GID).Msg("reusing existing group")
		return
	}
	gids := gr.ids(2)
	r.GID = freeID(gids, p.o.GID)
	if r.GID != p.o.GID {
		p.log.Warn().Str("group", name).Int("wanted_gid", p.o.GID).Str("held_by", gids[p.o.GID]).Int("gid", r.GID).
			Msg("gid taken by another group, left untouched; using the next free gid")
	}
}

func freeID(taken map[int]string, want int) int {
	for id := want; ; id++ {
		if _, ok := taken[id]; !ok {
			return id
		}
	}
}

// addEntries adds whatever of the user, its group and its sudo membership
// is missing; entries present are never rewritten.
func (p *provisioner) addEntries(pw, sh, gr, gs *colonFile) {
	r, name := p.res, p.o.User
	uid, gid := strconv.Itoa(r.UID), strconv.Itoa(r.GID)
	if _, i := pw.find(0, name); i < 0 {
		pw.add(name, "x", uid, gid, name, r.Home, r.Shell)
		p.log.Info().Str("user", name).Int("uid", r.UID).Int("gid", r.GID).Str("shell", r.Shell).Msg("user created")
	}
	// A locked password ("!"): nobody logs in with one, sudo needs none.
	// The last-change day must not be 0, which would force a password
	// change and make PAM's account check (run by sudo) fail.
	if _, i := sh.find(0, name); i < 0 && !sh.missing {
		day := strconv.FormatInt(time.Now().Unix()/86400, 10)
		sh.add(name, "!", day, "0", "99999", "7", "", "", "")
	}
	_, byGID := gr.find(2, gid)
	if _, byName := gr.find(0, name); byGID < 0 && byName < 0 {
		gr.add(name, "x", gid, "")
	}
	if _, i := gs.find(0, name); i < 0 && !gs.missing {
		gs.add(name, "!", "", "")
	}
	_, si := gr.find(0, SudoGroup)
	if si < 0 {
		sgid := freeID(gr.ids(2), 27) // Debian's and Ubuntu's gid for sudo
		gr.add(SudoGroup, "x", strconv.Itoa(sgid), "")
		_, si = gr.find(0, SudoGroup)
		p.log.Info().Str("group", SudoGroup).Int("gid", sgid).Msg("group created")
	}
	gr.addMember(si, 3, name)
	if !gs.missing {
		if _, i := gs.find(0, SudoGroup); i < 0 {
			gs.add(SudoGroup, "*", "", "")
		}
		_, i := gs.find(0, SudoGroup)
		gs.addMember(i, 3, name)
	}
}

// shell is the sandbox user's login shell: bash when the image has it.
func (p *provisioner) shell() string {
	for _, s := range []string{"/bin/bash", "/usr/bin/bash"} {
		if fi, err := os.Stat(filepath.Join(p.root, s)); err == nil && fi.Mode().IsRegular() {
			return s
		}
	}
	return "/bin/sh"
}

// home creates the user's home from /etc/skel. An existing home is not
// refilled; if root owns it (an image that made the folder), it is given
// to the user.
func (p *provisioner) home() error {
	r := p.res
	home := filepath.Join(p.root, r.Home)
	fi, err := os.Lstat(home)
	if err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("home %s exists and is not a folder", r.Home)
		}
		if owner(fi) == 0 && r.UID != 0 {
			if err := os.Lchown(home, r.UID, r.GID); err != nil {
				return fmt.Errorf("home %s: %w", r.Home, err)
			}
			p.changed(home)
			p.log.Info().Str("home", r.Home).Msg("home owned by root given to the user")
		}
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(home), 0o755); err != nil {
		return fmt.Errorf("home %s: %w", r.Home, err)
	}
	if err := os.Mkdir(home, 0o750); err != nil {
		return fmt.Errorf("home %s: %w", r.Home, err)
	}
	if err := os.Lchown(home, r.UID, r.GID); err != nil {
		return fmt.Errorf("home %s: %w", r.Home, err)
	}
	p.changed(home)
	if err := copySkel(filepath.Join(p.etc, "skel"), home, r.UID, r.GID); err != nil {
		return fmt.Errorf("home %s from /etc/skel: %w", r.Home, err)
	}
	p.log.Info().Str("home", r.Home).Msg("home created from /etc/skel")
	return nil
}

// Workspace is the folder the API's examples work in (scp ./x
// <id>@...:/workspace/, a PTY with "working_dir": "/workspace"), owned by
// the sandbox user.
const Workspace = "/workspace"

// workspace creates Workspace for the user (0755). An existing folder
// owned by root (the image made it) is given to the user, as the home is;
// one owned by anybody else, or a symlink, is the image's choice and left
// alone.
func (p *provisioner) workspace() error {
	r := p.res
	path := filepath.Join(p.root, Workspace)
	fi, err := os.Lstat(path)
	switch {
	case err == nil && fi.Mode()&os.ModeSymlink != 0:
		return nil
	case err == nil && !fi.IsDir():
		return fmt.Errorf("%s exists and is not a folder", Workspace)
	case err == nil && (owner(fi) != 0 || r.UID == 0):
		return nil
	case err != nil && !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%s: %w", Workspace, err)
	case err != nil:
		if err := os.Mkdir(path, 0o755); err != nil {
			return fmt.Errorf("%s: %w", Workspace, err)
		}
		// Mkdir's mode is masked by the umask.
		if err := os.Chmod(path, 0o755); err != nil {
			return fmt.Errorf("%s: %w", Workspace, err)
		}
	}
	if err := os.Lchown(path, r.UID, r.GID); err != nil {
		return fmt.Errorf("%s: %w", Workspace, err)
	}
	p.changed(path)
	p.log.Info().Str("path", Workspace).Int("uid", r.UID).Msg("workspace given to the user")
	return nil
}

// copySkel copies the skeleton tree (folders, files, symlinks; nothing
// else) into home, owned by the user. A missing skel is an empty one.
func copySkel(skel, home string, uid, gid int) error {
	if _, err := os.Stat(skel); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return filepath.Walk(skel, func(src string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(skel, src)
		if rel == "." {
			return nil
		}
		dst := filepath.Join(home, rel)
		switch {
		case fi.IsDir():
			err = os.Mkdir(dst, fi.Mode().Perm())
		case fi.Mode()&os.ModeSymlink != 0:
			var target string
			if target, err = os.Readlink(src); err == nil {
				err = os.Symlink(target, dst)
			}
		case fi.Mode().IsRegular():
			var data []byte
			if data, err = os.ReadFile(src); err == nil {
				err = os.WriteFile(dst, data, fi.Mode().Perm())
			}
			if err == nil {
				err = os.Chmod(dst, fi.Mode().Perm()) // WriteFile's mode is masked by umask
			}
		default:
			return nil
		}
		if err != nil {
			return err
		}
		return os.Lchown(dst, uid, gid)
	})
}

// sudoersLine grants password-less sudo; sudo reads drop-ins that are
// owned by root and not writable by others, hence mode 0440.
func sudoersLine(user string) string { return user + " ALL=(ALL) NOPASSWD:ALL\n" }

// sudoers writes /etc/sudoers.d/<user>. An /etc/sudoers that includes no
// drop-in folder (some minimal images) gets an @includedir line appended,
// which sudo 1.9.1+ reads and older sudo takes for a comment; that is the
// only edit made to the image's own sudoers.
func (p *provisioner) sudoers() error {
	dir := filepath.Join(p.etc, "sudoers.d")
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.Mkdir(dir, 0o750); err != nil {
			return fmt.Errorf("sudoers: %w", err)
		}
		p.changed(dir)
	}
	main := filepath.Join(p.etc, "sudoers")
	if data, err := os.ReadFile(main); err == nil && !includesDropIns(string(data)) {
		add := "\n# Added by tl-agent: read drop-ins such as sudoers.d/" + p.o.User + ".\n@includedir /etc/sudoers.d\n"
		if len(data) > 0 && data[len(data)-1] != '\n' {
			add = "\n" + add
		}
		if err := writeAtomic(main, append(data, add...), 0o440); err != nil {
			return fmt.Errorf("sudoers: %w", err)
		}
		p.changed(main)
		p.log.Info().Msg("sudoers had no includedir: appended @includedir /etc/sudoers.d")
	}
	path := filepath.Join(dir, p.o.User)
	want := sudoersLine(p.o.User)
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm() == 0o440 && owner(fi) == 0 {
		if got, err := os.ReadFile(path); err == nil && string(got) == want {
			return nil
		}
	}
	os.Remove(path) // writeAtomic would keep a wrong mode or owner
	if err := writeAtomic(path, []byte(want), 0o440); err != nil {
		return fmt.Errorf("sudoers: %w", err)
	}
	p.changed(path)
	p.log.Info().Str("path", path).Msg("sudoers drop-in written")
	return nil
}

func includesDropIns(sudoers string) bool {
	for _, l := range strings.Split(sudoers, "\n") {
		f := strings.Fields(l)
		if len(f) == 2 && (f[0] == "#includedir" || f[0] == "@includedir") && strings.TrimSuffix(f[1], "/") == "/etc/sudoers.d" {
			return true
		}
	}
	return false
}

// hostFiles writes /etc/hostname and maps the name in /etc/hosts to
// 127.0.1.1, as Debian does, so that tools resolving their own host name
// (sudo, for one) answer at once.
func (p *provisioner) hostFiles() error {
	name := p.o.Hostname
	var errs []error
	hn := filepath.Join(p.etc, "hostname")
	if got, err := os.ReadFile(hn); err != nil || strings.TrimSpace(string(got)) != name {
		if err := writeAtomic(hn, []byte(name+"\n"), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("write %s: %w", hn, err))
		} else {
			p.changed(hn)
		}
	}
	hosts := filepath.Join(p.etc, "hosts")
	data, err := os.ReadFile(hosts)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return errors.Join(append(errs, fmt.Errorf("read %s: %w", hosts, err))...)
	}
	if out, ok := withHostLine(string(data), name); ok {
		if err := writeAtomic(hosts, []byte(out), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("write %s: %w", hosts, err))
		} else {
			p.changed(hosts)
		}
	}
	return errors.Join(errs...)
}

// withHostLine returns hosts with "127.0.1.1 name" and whether that
// changed anything. A file that already maps name is left alone; an
// existing 127.0.1.1 line (the image's build host) is replaced; an empty
// file gets localhost entries too.
func withHostLine(hosts, name string) (string, bool) {
	line := "127.0.1.1\t" + name
	lines := strings.Split(strings.TrimSuffix(hosts, "\n"), "\n")
	for i, l := range lines {
		f := strings.Fields(strings.SplitN(l, "#", 2)[0])
		if len(f) < 2 {
			continue
		}
		for _, n := range f[1:] {
			if n == name {
				return hosts, false
			}
		}
		if f[0] == "127.0.1.1" {
			lines[i] = line
			return strings.Join(lines, "\n") + "\n", true
		}
	}
	if strings.TrimSpace(hosts) == "" {
		return "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" + line + "\n", true
	}
	return strings.Join(lines, "\n") + "\n" + line + "\n", true
}

// setHostname sets the kernel's host name (the sandbox's own UTS
// namespace). A runtime that forbids it but already chose the name is fine.
func (p *provisioner) setHostname() error {
	name := p.o.Hostname
	cur, _ := os.Hostname()
	if cur == name {
		p.log.Info().Str("hostname", name).Msg("host name already set")
		return nil
	}
	if err := unix.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("sethostname %s (host name is %s): %w", name, cur, err)
	}
	p.log.Info().Str("hostname", name).Str("was", cur).Msg("host name set")
	return nil
}

func owner(fi os.FileInfo) int {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid)
	}
	return -1
}
