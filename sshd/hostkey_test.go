package sshd

import (
	"bytes"
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
