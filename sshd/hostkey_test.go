package sshd

import (
	"bytes"
	"crypto/rand"
	"testing"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/supervisor"
)

// TestHostKeyKept: a server given its predecessor's host key (a live
// upgrade) serves with that key; without one each server makes its own.
func TestHostKeyKept(t *testing.T) {
	reaper := supervisor.NewReaper(zerolog.Nop(), false)
	a, err := New(Config{User: me(t)}, zerolog.Nop(), reaper)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	key, err := a.HostKey()
	if err != nil || len(key) == 0 {
		t.Fatalf("HostKey: %v", err)
	}
	b, err := New(Config{User: me(t), HostKey: &key}, zerolog.Nop(), reaper)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if !bytes.Equal(a.signer.PublicKey().Marshal(), b.signer.PublicKey().Marshal()) {
		t.Fatal("the kept host key was not used")
	}
	c, err := New(Config{User: me(t)}, zerolog.Nop(), reaper)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if bytes.Equal(a.signer.PublicKey().Marshal(), c.signer.PublicKey().Marshal()) {
		t.Fatal("two fresh servers share a host key")
	}
}

// The host key is made at its first use when that comes before the
// warm-up timer: a handshake right after the start gets a working key.
func TestLazySignerFirstUse(t *testing.T) {
	l := newLazySigner(nil)
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
