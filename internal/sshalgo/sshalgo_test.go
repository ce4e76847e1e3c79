package sshalgo

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"

	gossh "golang.org/x/crypto/ssh"
)

// Every name is one x/crypto implements and does not call insecure: a
// name it does not know would be dropped silently (Config.SetDefaults).
func TestNamesSupported(t *testing.T) {
	sup := gossh.SupportedAlgorithms()
	for _, c := range []struct {
		kind      string
		ours, all []string
	}{
		{"cipher", Ciphers, sup.Ciphers},
		{"kex", KeyExchanges, sup.KeyExchanges},
		{"mac", MACs, sup.MACs},
	} {
		for _, n := range c.ours {
			if !slices.Contains(c.all, n) {
				t.Errorf("%s %s is not in x/crypto's SupportedAlgorithms", c.kind, n)
			}
		}
	}
}

// Config hands out copies: a caller that edits its lists changes no other.
func TestConfigCopies(t *testing.T) {
	c := Config()
	c.Ciphers[0] = "x"
	if Ciphers[0] == "x" {
		t.Fatal("Config shares the package's cipher list")
	}
}

// Each algorithm completes a handshake between an x/crypto client that
// offers only it and a server with Config.
func TestEachAlgorithmHandshakes(t *testing.T) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := gossh.NewSignerFromKey(priv)
	one := func(kind, name string) gossh.Config {
		c := Config()
		switch kind {
		case "cipher":
			c.Ciphers = []string{name}
		case "kex":
			c.KeyExchanges = []string{name}
		case "mac":
			c.Ciphers, c.MACs = []string{gossh.CipherAES128CTR}, []string{name}
		}
		return c
	}
	var cases [][2]string
	for _, n := range Ciphers {
		cases = append(cases, [2]string{"cipher", n})
	}
	for _, n := range append(slices.Clone(KeyExchanges), "curve25519-sha256@libssh.org") {
		cases = append(cases, [2]string{"kex", n})
	}
	for _, n := range MACs {
		cases = append(cases, [2]string{"mac", n})
	}
	for _, c := range cases {
		t.Run(c[0]+"/"+c[1], func(t *testing.T) {
			a, b := tcpPair(t)
			defer a.Close()
			defer b.Close()
			scfg := &gossh.ServerConfig{Config: Config(), NoClientAuth: true}
			scfg.AddHostKey(signer)
			done := make(chan error, 1)
			go func() {
				conn, _, _, err := gossh.NewServerConn(a, scfg)
				if err == nil {
					conn.Close()
				}
				done <- err
			}()
			ccfg := &gossh.ClientConfig{Config: one(c[0], c[1]), HostKeyCallback: gossh.InsecureIgnoreHostKey(), User: "u"}
			conn, _, _, err := gossh.NewClientConn(b, "pipe", ccfg)
			if err != nil {
				t.Fatalf("client: %v", err)
			}
			conn.Close()
			if err := <-done; err != nil {
				t.Fatalf("server: %v", err)
			}
		})
	}
}

// Reason keeps short errors whole and cuts long ones at the bound.
func TestReason(t *testing.T) {
	if Reason(nil) != "" {
		t.Fatal("nil error has a reason")
	}
	long := errors.New(strings.Repeat("x", 100_000))
	if r := Reason(long); len(r) > maxReason+len("...(truncated)") {
		t.Fatalf("reason of %d bytes", len(r))
	}
	if Reason(errors.New("short")) != "short" {
		t.Fatal("short reason changed")
	}
}

// tcpPair is a loopback connection (net.Pipe is unbuffered, and both ends
// of an SSH handshake write their version first).
func tcpPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	b, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return a, b
}
