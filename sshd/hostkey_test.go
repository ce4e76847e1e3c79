package sshd

import (
	"crypto/rand"
	"testing"
)

// The host key is made at its first use when that comes before the
// warm-up timer: a handshake right after the start gets a working key.
func TestLazySignerFirstUse(t *testing.T) {
	l := newLazySigner()
	sig, err := l.Sign(rand.Reader, []byte("challenge"))
	if err != nil {
		t.Fatalf("sign at first use: %v", err)
	}
	if err := l.PublicKey().Verify([]byte("challenge"), sig); err != nil {
		t.Fatalf("the signature does not verify with the key's public half: %v", err)
	}
	l.make() // the warm-up after first use changes nothing
	if err := l.PublicKey().Verify([]byte("challenge"), sig); err != nil {
		t.Fatalf("the key changed after the warm-up: %v", err)
	}
}
