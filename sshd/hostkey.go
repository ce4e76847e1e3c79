package sshd

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"io"
	"sync"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// lazySigner is the host key, made at first use or hostKeyWarm after New,
// whichever comes first: the first ed25519 key of a process costs 1.5–2 ms
// of CPU (Go's crypto self-tests run at first use; 14% of the agent's CPU
// from exec to its first answer in a profile), which competed with the
// agent's start on a 2-core machine even on a goroutine of its own. Only
// an SSH handshake needs the key. A key kept across a live upgrade
// (Config.HostKey) is used as it is.
type lazySigner struct {
	once   sync.Once
	kept   ed25519.PrivateKey
	priv   ed25519.PrivateKey
	signer gossh.Signer
	err    error
}

// hostKeyWarm is when the key is made if no handshake asked for it first:
// after the start, so the first SSH connection rarely waits for it.
const hostKeyWarm = 250 * time.Millisecond

// newLazySigner makes a fresh key, or uses kept when it is a valid one.
func newLazySigner(kept *ed25519.PrivateKey) *lazySigner {
	l := &lazySigner{}
	if kept != nil && len(*kept) == ed25519.PrivateKeySize {
		l.kept = *kept
	}
	time.AfterFunc(hostKeyWarm, l.make)
	return l
}

// make generates (or takes) the key, once.
func (l *lazySigner) make() {
	l.once.Do(func() {
		priv, err := l.kept, error(nil)
		if priv == nil {
			_, priv, err = ed25519.GenerateKey(rand.Reader)
		}
		if err == nil {
			l.priv = priv
			l.signer, err = gossh.NewSignerFromKey(priv)
		}
		if err != nil {
			l.err = fmt.Errorf("ssh host key: %w", err)
		}
	})
}

// PublicKey is the host key's public half; a failed generation (crypto/rand
// broken) gives an ed25519 key of zeros, whose handshakes then fail in Sign.
func (l *lazySigner) PublicKey() gossh.PublicKey {
	l.make()
	if l.err != nil {
		pk, _ := gossh.NewPublicKey(make(ed25519.PublicKey, ed25519.PublicKeySize))
		return pk
	}
	return l.signer.PublicKey()
}

func (l *lazySigner) Sign(r io.Reader, data []byte) (*gossh.Signature, error) {
	l.make()
	if l.err != nil {
		return nil, l.err
	}
	return l.signer.Sign(r, data)
}

// HostKey is the server's host key (made now if it was not yet): what a
// live upgrade hands to the next agent (Config.HostKey).
func (s *Server) HostKey() (ed25519.PrivateKey, error) {
	s.signer.make()
	return s.signer.priv, s.signer.err
}
