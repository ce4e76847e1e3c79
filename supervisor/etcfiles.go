package supervisor

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// This file edits the account databases the way shadow-utils does, without
// needing its binaries: under /etc/.pwd.lock (lckpwdf) and <file>.lock, by
// writing a sibling temp file and renaming it over the original.

// colonFile is one of /etc/passwd, shadow, group, gshadow: lines kept as
// read, so entries we do not touch are written back byte for byte.
type colonFile struct {
	path    string
	lines   []string
	missing bool // the file did not exist
	changed bool
}

func readColonFile(path string) (*colonFile, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &colonFile{path: path, missing: true}, nil
	}
	if err != nil {
		return nil, err
	}
	s := string(data)
	s = strings.TrimSuffix(s, "\n")
	f := &colonFile{path: path}
	if s != "" {
		f.lines = strings.Split(s, "\n")
	}
	return f, nil
}

// find returns the fields of the entry whose field idx equals val, and its
// line number, or -1.
func (f *colonFile) find(idx int, val string) ([]string, int) {
	for i, l := range f.lines {
		if l == "" || l[0] == '#' {
			continue
		}
		fs := strings.Split(l, ":")
		if len(fs) > idx && fs[idx] == val {
			return fs, i
		}
	}
	return nil, -1
}

// ids returns the numeric field idx of every entry (uids or gids in use).
func (f *colonFile) ids(idx int) map[int]string {
	out := map[int]string{}
	for _, l := range f.lines {
		fs := strings.Split(l, ":")
		if len(fs) > idx {
			if n, err := strconv.Atoi(fs[idx]); err == nil {
				out[n] = fs[0]
			}
		}
	}
	return out
}

func (f *colonFile) add(fields ...string) {
	f.lines = append(f.lines, strings.Join(fields, ":"))
	f.changed = true
}

func (f *colonFile) set(i int, fields []string) {
	f.lines[i] = strings.Join(fields, ":")
	f.changed = true
}

// addMember adds user to the comma-separated member list in field idx of
// entry line i, if absent.
func (f *colonFile) addMember(i, idx int, user string) bool {
	fs := strings.Split(f.lines[i], ":")
	for len(fs) <= idx {
		fs = append(fs, "")
	}
	var members []string
	if fs[idx] != "" {
		members = strings.Split(fs[idx], ",")
	}
	for _, m := range members {
		if m == user {
			return false
		}
	}
	fs[idx] = strings.Join(append(members, user), ",")
	f.set(i, fs)
	return true
}

func (f *colonFile) bytes() []byte {
	if len(f.lines) == 0 {
		return nil
	}
	return []byte(strings.Join(f.lines, "\n") + "\n")
}

// writeAtomic replaces path with data: a temp file in the same folder
// given the original's mode and owner (or mode and root for a new file),
// synced, then renamed over it, so a reader never sees half a file. A path
// that is a mount point (Docker bind-mounts /etc/hosts and /etc/hostname)
// cannot be renamed over: it is rewritten in place instead.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	uid, gid := 0, 0
	if fi, err := os.Stat(path); err == nil {
		mode = fi.Mode().Perm()
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			uid, gid = int(st.Uid), int(st.Gid)
		}
	}
	dir, base := filepath.Split(path)
	tmp, err := os.CreateTemp(dir, "."+base+".tl-")
	if err != nil {
		return err
	}
	name := tmp.Name()
	ok := false
	defer func() {
		if !ok {
			os.Remove(name)
		}
	}()
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chown(uid, gid); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(name, path); err != nil {
		if !errors.Is(err, unix.EBUSY) {
			return err
		}
		os.Remove(name)
		ok = true
		return os.WriteFile(path, data, mode)
	}
	ok = true
	return nil
}

// lockTimeout is how long we wait for another tool (useradd, passwd)
// holding the account databases; lckpwdf waits 15 s.
const lockTimeout = 15 * time.Second

// pwdLock takes /etc/.pwd.lock the way lckpwdf(3) does: an exclusive
// fcntl lock on the file, held until unlock. Both glibc and shadow-utils
// take it before writing passwd or shadow; busybox does not.
func pwdLock(etc string) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(etc, ".pwd.lock"), os.O_WRONLY|os.O_CREATE|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open %s/.pwd.lock: %w", etc, err)
	}
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0}
	deadline := time.Now().Add(lockTimeout)
	for {
		err = unix.FcntlFlock(f.Fd(), unix.F_SETLK, &lk)
		if err == nil {
			break
		}
		if (err != unix.EAGAIN && err != unix.EACCES) || time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("lock %s/.pwd.lock: %w", etc, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return func() { f.Close() }, nil // closing drops the fcntl lock
}

// fileLock takes path+".lock" as shadow-utils' commonio_lock does: write
// our pid to a unique file and hard-link it to the lock name, which is
// atomic; a lock left by a dead process is removed and taken.
func fileLock(path string) (unlock func(), err error) {
	lock := path + ".lock"
	pid := os.Getpid()
	tmp := fmt.Sprintf("%s.%d", path, pid)
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(pid)), 0o600); err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	defer os.Remove(tmp)
	deadline := time.Now().Add(lockTimeout)
	for {
		err := os.Link(tmp, lock)
		if err == nil {
			return func() { os.Remove(lock) }, nil
		}
		if !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if data, rerr := os.ReadFile(lock); rerr == nil {
			holder, _ := strconv.Atoi(strings.TrimSpace(string(data)))
			if holder <= 0 || holder == pid || unix.Kill(holder, 0) == unix.ESRCH {
				os.Remove(lock) // stale: its holder is gone
				continue
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("lock %s: held by another process", path)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
