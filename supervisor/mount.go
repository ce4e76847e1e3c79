package supervisor

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// apiMount is a file system a Linux userland expects, mounted by PID 1 when
// the runtime (a bare VM's kernel) did not.
type apiMount struct {
	target, fstype, source string
	flags                  uintptr
	data                   string
}

// cgroupMountPoint is where a VM's init mounts cgroup2 (below).
const cgroupMountPoint = "/sys/fs/cgroup"

// apiMounts are in dependency order: /dev before what lives in it.
var apiMounts = []apiMount{
	{"/proc", "proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"/sys", "sysfs", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"/dev", "devtmpfs", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	// A private devpts instance whose own ptmx anyone may open; /dev/ptmx
	// is pointed at it below.
	{"/dev/pts", "devpts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=%d"},
	{"/dev/shm", "tmpfs", "shm", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"/run", "tmpfs", "run", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	{"/tmp", "tmpfs", "tmp", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
}

// Mount mounts whichever of /proc, /sys, /dev, /dev/pts, /dev/shm, /run
// and /tmp is not a mount point yet, and leaves alone what the runtime
// mounted. It returns the targets it mounted; a failure is logged, joined
// into the error and does not stop the others.
func Mount(log zerolog.Logger) ([]string, error) {
	log = log.With().Str("component", "mount").Logger()
	var done []string
	var errs []error
	// Before /proc exists there is no mountinfo: recognize procfs by its
	// magic number instead.
	var st unix.Statfs_t
	if unix.Statfs("/proc", &st) != nil || st.Type != unix.PROC_SUPER_MAGIC {
		if err := mountOne(apiMounts[0]); err != nil {
			errs = append(errs, err)
			log.Error().Err(err).Msg("mount failed")
		} else {
			done = append(done, "/proc")
		}
	}
	present, err := mountPoints("/proc/self/mountinfo")
	if err != nil {
		return done, errors.Join(append(errs, fmt.Errorf("read mountinfo: %w", err))...)
	}
	for _, m := range apiMounts[1:] {
		if present[m.target] {
			continue
		}
		if m.fstype == "devpts" {
			m.data = fmt.Sprintf(m.data, ttyGID())
		}
		if err := mountOne(m); err != nil {
			errs = append(errs, err)
			log.Error().Err(err).Msg("mount failed")
			continue
		}
		done = append(done, m.target)
		switch m.target {
		case "/dev":
			devLinks()
		case "/dev/pts":
			if err := pointPtmx(); err != nil {
				errs = append(errs, err)
				log.Error().Err(err).Msg("mount failed")
			}
		}
	}
	// A VM's init has nobody to mount the cgroup file system (a container
	// runtime does its own): without it there is no workload cgroup.
	if InitialPidNS() && !present[cgroupMountPoint] && (present["/sys"] || slices.Contains(done, "/sys")) {
		if err := mountOne(apiMount{cgroupMountPoint, "cgroup2", "cgroup2", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""}); err != nil {
			errs = append(errs, err)
			log.Error().Err(err).Msg("mount failed")
		} else {
			done = append(done, cgroupMountPoint)
		}
	}
	if len(done) > 0 {
		log.Info().Strs("mounted", done).Msg("mounted missing file systems")
	} else {
		log.Info().Msg("file systems already mounted")
	}
	return done, errors.Join(errs...)
}

func mountOne(m apiMount) error {
	if err := os.MkdirAll(m.target, 0o755); err != nil {
		return fmt.Errorf("mount %s: %w", m.target, err)
	}
	if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil {
		return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
	}
	return nil
}

// pointPtmx makes /dev/ptmx open our devpts instance: PTYs opened through
// the old node would otherwise land in whatever instance it belongs to.
func pointPtmx() error {
	if target, err := os.Readlink("/dev/ptmx"); err == nil && (target == "pts/ptmx" || target == "/dev/pts/ptmx") {
		return nil
	}
	if _, err := os.Lstat("/dev/ptmx"); errors.Is(err, os.ErrNotExist) {
		return os.Symlink("pts/ptmx", "/dev/ptmx")
	}
	// A bind mount rather than replacing the node: /dev may be the host's
	// or devtmpfs, which we do not edit.
	if err := unix.Mount("/dev/pts/ptmx", "/dev/ptmx", "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind /dev/pts/ptmx on /dev/ptmx: %w", err)
	}
	return nil
}

// devLinks adds the links udev would make in a fresh devtmpfs, which
// shells rely on (process substitution uses /dev/fd).
func devLinks() {
	for name, target := range map[string]string{
		"/dev/fd": "/proc/self/fd", "/dev/stdin": "/proc/self/fd/0",
		"/dev/stdout": "/proc/self/fd/1", "/dev/stderr": "/proc/self/fd/2", "/dev/core": "/proc/kcore",
	} {
		if _, err := os.Lstat(name); errors.Is(err, os.ErrNotExist) {
			_ = os.Symlink(target, name)
		}
	}
}

// ttyGID is the gid PTY slaves get: group tty, 5 on every distribution we
// know, read from /etc/group when it is there.
func ttyGID() int {
	f, err := os.Open("/etc/group")
	if err != nil {
		return 5
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Split(sc.Text(), ":")
		if len(fs) >= 3 && fs[0] == "tty" {
			if gid, err := strconv.Atoi(fs[2]); err == nil {
				return gid
			}
		}
	}
	return 5
}

func mountPoints(path string) (map[string]bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseMountInfo(f)
}

// parseMountInfo returns the mount points listed in a mountinfo file
// (proc(5)): the fifth field, with octal escapes such as \040 undone.
func parseMountInfo(r io.Reader) (map[string]bool, error) {
	out := map[string]bool{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 5 {
			continue
		}
		out[unescapeOctal(fs[4])] = true
	}
	return out, sc.Err()
}

func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
