package sshd

import (
	"bytes"
	"io"
	"os"
	"path/filepath"

	"github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"

	"github.com/tensorlake/tl-agent/identity"
)

// maxAuthorizedKeys bounds how much of authorized_keys is read.
const maxAuthorizedKeys = 1 << 20

// keyAuthorized reports whether key is in the sandbox user's
// ~/.ssh/authorized_keys. The file is read at each attempt so edits take
// effect at once, as with OpenSSH. Options in the file are not applied.
func (s *Server) keyAuthorized(key ssh.PublicKey) bool {
	u, err := identity.Lookup(s.cfg.User)
	if err != nil {
		return false
	}
	f, err := os.Open(filepath.Join(u.Home, ".ssh", "authorized_keys"))
	if err != nil {
		return false
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxAuthorizedKeys))
	if err != nil {
		return false
	}
	want := key.Marshal()
	for len(data) > 0 {
		pk, _, _, rest, err := gossh.ParseAuthorizedKey(data)
		if err != nil {
			return false
		}
		if bytes.Equal(pk.Marshal(), want) {
			return true
		}
		data = rest
	}
	return false
}
