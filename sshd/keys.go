package sshd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/tensorlake/tl-agent/identity"
)

// maxAuthorizedKeys bounds how much of authorized_keys is read.
const maxAuthorizedKeys = 1 << 20

// keyAuthorized reports whether key is in the sandbox user's
// ~/.ssh/authorized_keys. The file is read at each attempt so edits take
// effect at once, as with OpenSSH, and read as the user (a link to a file
// only root may read gives nothing). It must be a regular file: it is
// opened non-blocking and checked with fstat, so a FIFO or a device there
// cannot hold a thread.
//
// A line carrying an option this server does not implement (command=,
// from=, restrict, no-pty, ...) is skipped with a log line: applying it
// in part, or not at all, would give that key more than its owner wrote.
func (s *Server) keyAuthorized(key ssh.PublicKey) bool {
	u := s.cfg.User
	return s.authorizedIn(u, filepath.Join(u.Home, ".ssh", "authorized_keys"), key)
}

// authorizedIn is keyAuthorized for the file at path.
func (s *Server) authorizedIn(u *identity.User, path string, key ssh.PublicKey) bool {
	data, err := readAuthorizedKeys(u, path)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			s.log.Warn().Err(err).Str("path", path).Msg("ssh: authorized_keys not read")
		}
		return false
	}
	want := key.Marshal()
	for line := 1; len(data) > 0; line++ {
		pk, _, opts, rest, err := gossh.ParseAuthorizedKey(data)
		if err != nil {
			return false
		}
		if bytes.Equal(pk.Marshal(), want) {
			// Only the option's name is logged: a command= may hold secrets.
			if bad := unsupportedOption(opts); bad != "" {
				s.log.Warn().Str("path", path).Str("option", bad).Str("key", gossh.FingerprintSHA256(pk)).
					Msg("ssh: key refused: its authorized_keys line has an option this server does not implement")
				data = rest
				continue
			}
			return true
		}
		data = rest
	}
	return false
}

// readAuthorizedKeys reads at most maxAuthorizedKeys of a regular file,
// opened with u's credentials.
func readAuthorizedKeys(u *identity.User, path string) ([]byte, error) {
	fd := -1
	err := u.AsUser(func() (err error) {
		fd, err = unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
		return err
	})
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (%v)", path, fi.Mode().Type())
	}
	return io.ReadAll(io.LimitReader(f, maxAuthorizedKeys))
}

// harmlessOptions are the authorized_keys options this server honours by
// what it is: the permissive ones grant what every key has here, and it
// runs no ~/.ssh/rc. no-X11-forwarding is not one of them: X11 is
// forwarded, so such a line fails closed like any other restriction.
var harmlessOptions = map[string]bool{
	"agent-forwarding": true, "port-forwarding": true, "pty": true,
	"user-rc": true, "x11-forwarding": true,
	"no-user-rc": true,
}

// unsupportedOption returns the name of the first option of a line that
// is not harmless ("" for none). Names are case-insensitive, as in OpenSSH.
func unsupportedOption(opts []string) string {
	for _, o := range opts {
		name, _, _ := strings.Cut(o, "=")
		if !harmlessOptions[strings.ToLower(name)] {
			return name
		}
	}
	return ""
}
