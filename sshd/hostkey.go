package sshd

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"io"

	gossh "golang.org/x/crypto/ssh"
)

// lazySigner is the host key, made on a goroutine of its own from New:
// the first ed25519 key of a process costs 1.5–2 ms (Go's crypto self-tests
// run at first use), which was on the agent's path from exec to serving.
// Only an SSH handshake needs the key, and it waits for it here.
type lazySigner struct {
	ready  chan struct{}
	priv   ed25519.PrivateKey
	signer gossh.Signer
	err    error
}

// newLazySigner makes a fresh key, or uses priv when it is a valid one.
func newLazySigner(kept *ed25519.PrivateKey) *lazySigner {
	l := &lazySigner{ready: make(chan struct{})}
	go func() {
		defer close(l.ready)
		var priv ed25519.PrivateKey
		var err error
		if kept != nil && len(*kept) == ed25519.PrivateKeySize {
			priv = *kept
		} else {
			_, priv, err = ed25519.GenerateKey(rand.Reader)
		}
		if err == nil {
			l.priv = priv
			l.signer, err = gossh.NewSignerFromKey(priv)
		}
		if err != nil {
			l.err = fmt.Errorf("ssh host key: %w", err)
		}
	}()
	return l
}

// PublicKey is the host key's public half; a failed generation (crypto/rand
// broken) gives an ed25519 key of zeros, whose handshakes then fail in Sign.
func (l *lazySigner) PublicKey() gossh.PublicKey {
	<-l.ready
	if l.err != nil {
		pk, _ := gossh.NewPublicKey(make(ed25519.PublicKey, ed25519.PublicKeySize))
		return pk
	}
	return l.signer.PublicKey()
}

func (l *lazySigner) Sign(r io.Reader, data []byte) (*gossh.Signature, error) {
	<-l.ready
	if l.err != nil {
		return nil, l.err
	}
	return l.signer.Sign(r, data)
}

// HostKey is the server's host key (waiting for it to be made): what a
// live upgrade hands to the next agent (Config.HostKey).
func (s *Server) HostKey() (ed25519.PrivateKey, error) {
	<-s.signer.ready
	return s.signer.priv, s.signer.err
}
