package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Freezing a file system (FIFREEZE) for a snapshot (docs/lifecycle.md):
// every write to it blocks until FITHAW, so a snapshot of its block device
// is consistent. It is a superblock's state, not a mount's: freezing a
// file system the host shares (the host's root seen through a bind mount,
// a chroot's lower layer) would hang the host. So only a file system the
// sandbox evidently owns is frozen: mounted whole (its mount's root is
// "/") at the path asked, on a block device, of a kind that supports it,
// with no part of it mounted elsewhere in view, and, outside a VM, not
// the one holding the agent's own binary (in a container or the
// namespace sandbox that file system is the host's; a process that is no
// init at all runs on this machine's own).

// freezable are the file systems (statfs f_type) that implement freeze
// and live on a block device the sandbox can own. overlay, tmpfs, proc,
// network and FUSE file systems are refused.
var freezable = map[int64]string{
	0xEF53:     "ext2/3/4",
	0x58465342: "xfs",
	0x9123683E: "btrfs",
	0xF2F52010: "f2fs",
}

// The ioctls (linux/fs.h: _IOWR('X', 119, int) and _IOWR('X', 120, int)).
const (
	fiFreeze = 0xC0045877
	fiThaw   = 0xC0045878
)

// ErrNotFreezable wraps every refusal of FreezeCheck.
var ErrNotFreezable = errors.New("not freezable")

// FreezeCheck reports why the file system mounted at path must not be
// frozen, nil when it may.
func FreezeCheck(path string) error {
	clean := filepath.Clean(path)
	if !filepath.IsAbs(clean) {
		return fmt.Errorf("%w: %q is not an absolute path", ErrNotFreezable, path)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(clean, &fs); err != nil {
		return fmt.Errorf("%w: statfs %s: %v", ErrNotFreezable, clean, err)
	}
	var st, exe unix.Stat_t
	if err := unix.Stat(clean, &st); err != nil {
		return fmt.Errorf("%w: stat %s: %v", ErrNotFreezable, clean, err)
	}
	// Only a VM's own init may freeze the file system it runs from.
	var guarded []uint64
	if !(os.Getpid() == 1 && InitialPidNS()) {
		var root unix.Stat_t
		if unix.Stat("/proc/self/exe", &exe) == nil {
			guarded = append(guarded, exe.Dev)
		}
		if unix.Stat("/", &root) == nil {
			guarded = append(guarded, root.Dev)
		}
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNotFreezable, err)
	}
	return checkFreezable(clean, int64(fs.Type), st.Dev, guarded, string(mi))
}

// checkFreezable is FreezeCheck's rule on what it read: path's statfs
// type, its device, the devices of the agent's binary and root when it is
// no VM's init (guarded), and the mount table.
func checkFreezable(path string, fsType int64, dev uint64, guarded []uint64, mountinfo string) error {
	refuse := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrNotFreezable, path, fmt.Sprintf(format, a...))
	}
	if _, ok := freezable[fsType]; !ok {
		return refuse("file system type %#x is not one that is frozen (ext4, xfs, btrfs, f2fs; never overlay, tmpfs or a network file system)", fsType)
	}
	if unix.Major(dev) == 0 {
		return refuse("not on a block device")
	}
	for _, g := range guarded {
		if g == dev {
			return refuse("it holds the agent's binary or root and the agent is no VM's init: it is the host's file system")
		}
	}
	devID := fmt.Sprintf("%d:%d", unix.Major(dev), unix.Minor(dev))
	found := false
	for _, line := range strings.Split(mountinfo, "\n") {
		// id parent major:minor root mountpoint opts [optional...] - fstype source superopts
		f := strings.Fields(line)
		if len(f) < 5 || f[2] != devID {
			continue
		}
		root, at := unescapeOctal(f[3]), unescapeOctal(f[4])
		if root != "/" {
			return refuse("part of it (%s) is also mounted at %s: a file system shared with something else", root, at)
		}
		if at == path {
			found = true
		}
	}
	if !found {
		return refuse("not a mount point of a whole file system (mount it there, or name its mount point)")
	}
	return nil
}

// FreezeFS freezes the file system mounted at path (after FreezeCheck)
// within ctx's deadline and returns the function that thaws it. FIFREEZE
// first writes back the dirty data, which may take long; it cannot be
// interrupted, so on a deadline the file system is thawed as soon as the
// call returns, and FreezeFS reports the timeout at once.
func FreezeFS(ctx context.Context, path string) (thaw func() error, err error) {
	if err := FreezeCheck(path); err != nil {
		return nil, err
	}
	f, err := os.Open(filepath.Clean(path))
	if err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fiFreeze, 0)
		if e != 0 {
			done <- e
			return
		}
		done <- nil
	}()
	thaw = func() error {
		defer f.Close()
		_, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fiThaw, 0)
		if e != 0 && e != unix.EINVAL { // EINVAL: not frozen (any more)
			return fmt.Errorf("thaw %s: %w", path, e)
		}
		return nil
	}
	select {
	case err := <-done:
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("freeze %s: %w", path, err)
		}
		return thaw, nil
	case <-ctx.Done():
		go func() {
			if <-done == nil {
				_ = thaw()
			} else {
				f.Close()
			}
		}()
		return nil, fmt.Errorf("freeze %s: %w", path, ctx.Err())
	}
}
