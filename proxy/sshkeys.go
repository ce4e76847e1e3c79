package proxy

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	gossh "golang.org/x/crypto/ssh"
)

// sshKey is one registered user key.
type sshKey struct {
	name      string          // the comment, else the fingerprint: for logs and the agent
	all       bool            // may reach every sandbox
	sandboxes map[string]bool // else these
}

func (k *sshKey) allows(id string) bool { return k.all || k.sandboxes[id] }

// maxKeysFile bounds the authorized keys file read.
const maxKeysFile = 4 << 20

// keyRing is the users' keys file, reread when it changes so keys can be
// added without restarting the proxy.
type keyRing struct {
	path string
	log  zerolog.Logger // refused lines are logged at each (re)load

	mu    sync.Mutex
	mtime time.Time          // guarded by mu
	size  int64              // guarded by mu
	keys  map[string]*sshKey // guarded by mu; key by marshalled public key
}

// lookup returns the entry of key, reloading the file when it changed.
func (r *keyRing) lookup(key gossh.PublicKey) (*sshKey, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fi, err := os.Stat(r.path)
	if err != nil {
		return nil, fmt.Errorf("ssh keys: %w", err)
	}
	if r.keys == nil || !fi.ModTime().Equal(r.mtime) || fi.Size() != r.size {
		keys, refused, err := loadKeys(r.path)
		if err != nil {
			return nil, err
		}
		for _, e := range refused {
			r.log.Warn().Err(e).Msg("ssh key refused")
		}
		r.keys, r.mtime, r.size = keys, fi.ModTime(), fi.Size()
	}
	return r.keys[string(key.Marshal())], nil
}

// loadKeys parses an authorized_keys style file. Each line may carry the
// option sandboxes="id1,id2" (or "*"); a key without it reaches every
// sandbox. A line with any other option is refused, not loaded, and
// returned in refused: an option the proxy does not implement (a typo
// such as sandbox=, or OpenSSH's restrictions like command= or no-pty)
// must never leave the key with more access than it says. A line that
// does not parse fails the whole file. See docs/ssh.md.
func loadKeys(path string) (keys map[string]*sshKey, refused []error, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("ssh keys: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxKeysFile))
	if err != nil {
		return nil, nil, fmt.Errorf("ssh keys: %w", err)
	}
	keys = map[string]*sshKey{}
	bad := map[string]bool{} // keys refused on some line
	for line, rest := 1, data; len(rest) > 0; line++ {
		var l []byte
		if i := strings.IndexByte(string(rest), '\n'); i >= 0 {
			l, rest = rest[:i], rest[i+1:]
		} else {
			l, rest = rest, nil
		}
		s := strings.TrimSpace(string(l))
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		pk, comment, opts, _, err := gossh.ParseAuthorizedKey([]byte(s))
		if err != nil {
			return nil, nil, fmt.Errorf("ssh keys %s:%d: %v", path, line, err)
		}
		id := string(pk.Marshal())
		k, err := keyEntry(pk, comment, opts)
		if err != nil {
			refused = append(refused, fmt.Errorf("%s:%d (%s): %w", path, line, gossh.FingerprintSHA256(pk), err))
			bad[id] = true
			delete(keys, id) // refused on one line: refused on all
			continue
		}
		if _, dup := keys[id]; dup || bad[id] {
			continue // the first line of a key decides
		}
		keys[id] = k
	}
	return keys, refused, nil
}

// keyEntry is one line's key with its options applied.
func keyEntry(pk gossh.PublicKey, comment string, opts []string) (*sshKey, error) {
	k := &sshKey{name: comment, all: true}
	if k.name == "" {
		k.name = gossh.FingerprintSHA256(pk)
	}
	for _, o := range opts {
		name, val, ok := strings.Cut(o, "=")
		if !strings.EqualFold(name, "sandboxes") {
			return nil, fmt.Errorf("option %q is not supported by tl-proxy (only sandboxes=\"id,...\"); key refused", name)
		}
		if !ok {
			return nil, errors.New(`option sandboxes needs a value: sandboxes="id,..." or "*"; key refused`)
		}
		val = strings.Trim(val, `"`)
		if val == "*" {
			continue
		}
		if k.all {
			k.all, k.sandboxes = false, map[string]bool{}
		}
		for _, id := range strings.Split(val, ",") {
			if id = strings.TrimSpace(id); id != "" {
				k.sandboxes[id] = true
			}
		}
	}
	return k, nil
}

// loadHostKey reads the proxy's host key, generating an ed25519 one (0600)
// on first start so clients see the same key every time.
func loadHostKey(path string) (gossh.Signer, error) {
	if path == "" {
		return nil, errors.New("ssh host key: no path configured")
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		_, priv, gerr := ed25519.GenerateKey(rand.Reader)
		if gerr != nil {
			return nil, gerr
		}
		block, gerr := gossh.MarshalPrivateKey(priv, "tl-proxy host key")
		if gerr != nil {
			return nil, gerr
		}
		data = pem.EncodeToMemory(block)
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("ssh host key: %w", err)
		}
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return nil, fmt.Errorf("ssh host key: %w", err)
		}
		signer, serr := gossh.NewSignerFromKey(priv)
		if serr == nil {
			_ = os.WriteFile(path+".pub", gossh.MarshalAuthorizedKey(signer.PublicKey()), 0o644)
		}
		return signer, serr
	}
	if err != nil {
		return nil, fmt.Errorf("ssh host key: %w", err)
	}
	signer, err := gossh.ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("ssh host key %s: %w", path, err)
	}
	return signer, nil
}
