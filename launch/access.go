package launch

import (
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"

	"github.com/tensorlake/tl-agent/identity"
)

// canEnter reports whether u may search dir and each of its parents by
// their mode bits (ACLs aside). Used only to explain a failed start: the
// kernel's answer, not this, decides.
func canEnter(dir string, u *identity.User) bool {
	if u.UID == 0 {
		return true
	}
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return false
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return true
		}
		perm := fi.Mode().Perm()
		var bit fs.FileMode = 0o001
		switch {
		case st.Uid == u.UID:
			bit = 0o100
		case st.Gid == u.GID || slices.Contains(u.Groups, st.Gid):
			bit = 0o010
		}
		if perm&bit == 0 {
			return false
		}
		if d == "/" || d == "." {
			return true
		}
	}
}
