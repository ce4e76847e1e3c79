package agent

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestResolveToken(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "tok")
	os.WriteFile(f, []byte("  s3cret-token \nsecond line\n"), 0o600)
	c := Defaults()
	c.TokenFile = f
	if err := c.ResolveToken(); err != nil || c.Token != "s3cret-token" {
		t.Fatalf("token %q, %v", c.Token, err)
	}
	c.TokenFile = f // now both set
	if c.ResolveToken() == nil {
		t.Fatal("--token and --token-file together accepted")
	}
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, []byte("\n"), 0o600)
	for _, p := range []string{empty, filepath.Join(dir, "missing")} {
		c := Defaults()
		c.TokenFile = p
		if c.ResolveToken() == nil {
			t.Errorf("%s accepted", p)
		}
	}
}

// TestLinkSecrets: newest first, at most two, a dropped one is gone, and
// without any the token is used.
func TestLinkSecrets(t *testing.T) {
	var l linkSecrets
	tok := []byte("token")
	if k, link := l.pick(tok); link || !bytes.Equal(k, tok) {
		t.Fatal("no secrets: want the token")
	}
	a, b, c := []byte("a"), []byte("b"), []byte("c")
	l.set(a)
	l.push(b)
	l.push(c)
	if k, link := l.pick(tok); !link || !bytes.Equal(k, c) || len(l.keys) != 2 {
		t.Fatalf("pick %q, keys %q", k, l.keys)
	}
	l.drop(c)
	if k, _ := l.pick(tok); !bytes.Equal(k, b) {
		t.Fatalf("after drop: %q", k)
	}
	l.drop(b)
	if _, link := l.pick(tok); link {
		t.Fatal("secrets left after dropping all")
	}
}

func TestConfigValidate(t *testing.T) {
	ok := Defaults()
	ok.ProxyAddr, ok.SandboxID, ok.Token = "p:1", "s", "t"
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for name, mut := range map[string]func(*Config){
		"no uplink":      func(c *Config) { c.ProxyAddr = "" },
		"both uplinks":   func(c *Config) { c.Listen = "unix:/x" },
		"no id":          func(c *Config) { c.SandboxID = "" },
		"no token":       func(c *Config) { c.Token = "" },
		"bad listen":     func(c *Config) { c.ProxyAddr, c.Listen = "", "udp:1" },
		"ca without tls": func(c *Config) { c.CAFile = "/ca.pem" },
		"zero grace":     func(c *Config) { c.ShutdownGrace = 0 },
		"zero sessions":  func(c *Config) { c.PTY.MaxSessions = 0 },
		"zero streams":   func(c *Config) { c.MaxAPIStreams = 0 },
		"bad incubator":  func(c *Config) { c.Incubator = "c" },
	} {
		c := ok
		mut(&c)
		if c.Validate() == nil {
			t.Errorf("%s: validated", name)
		}
	}
}

func TestBackoff(t *testing.T) {
	b := redialBackoff()
	first := b.Next()
	if first < backoffMin/2 || first > backoffMin {
		t.Fatalf("first wait %v outside [%v, %v]", first, backoffMin/2, backoffMin)
	}
	var last time.Duration
	for i := 0; i < 20; i++ {
		last = b.Next()
		if last > backoffMax {
			t.Fatalf("wait %v over cap %v", last, backoffMax)
		}
	}
	if last < backoffMax/2 {
		t.Fatalf("wait %v did not reach the cap range", last)
	}
	b.Reset()
	if w := b.Next(); w > backoffMin {
		t.Fatalf("after reset: %v", w)
	}
}

// Negative bounds of the sub-configs are refused, never turned into
// defaults, and the message names the field and the flags that set it.
func TestConfigValidateSubConfigs(t *testing.T) {
	ok := Defaults()
	ok.ProxyAddr, ok.SandboxID, ok.Token = "p:1", "s", "t"
	for _, c := range []struct {
		name string
		mut  func(*Config)
		want string
	}{
		{"negative pty clients", func(c *Config) { c.PTY.MaxClients = -1 }, "pty config: MaxClients is -1"},
		{"negative proc lines", func(c *Config) { c.Processes.MaxLines = -5 }, "process config: MaxLines is -5: must not be negative (the --proc-* flags)"},
		{"negative stall", func(c *Config) { c.Processes.StallTimeout = -time.Second }, "process config: StallTimeout is -1s"},
		{"zero proc lines takes the default", func(c *Config) { c.Processes.MaxLines = 0 }, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := ok
			c.mut(&cfg)
			err := cfg.Validate()
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case c.want != "" && (err == nil || !strings.HasPrefix(err.Error(), c.want)):
				t.Fatalf("got %v, want %q...", err, c.want)
			}
		})
	}
}
