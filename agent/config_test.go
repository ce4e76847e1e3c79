package agent

import (
	"testing"
	"time"
)

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
		"zero sessions":  func(c *Config) { c.PTYMaxSessions = 0 },
	} {
		c := ok
		mut(&c)
		if c.Validate() == nil {
			t.Errorf("%s: validated", name)
		}
	}
}

func TestBackoff(t *testing.T) {
	var b backoff
	first := b.wait()
	if first < backoffMin/2 || first > backoffMin {
		t.Fatalf("first wait %v outside [%v, %v]", first, backoffMin/2, backoffMin)
	}
	var last time.Duration
	for i := 0; i < 20; i++ {
		last = b.wait()
		if last > backoffMax {
			t.Fatalf("wait %v over cap %v", last, backoffMax)
		}
	}
	if last < backoffMax/2 {
		t.Fatalf("wait %v did not reach the cap range", last)
	}
	b.reset()
	if w := b.wait(); w > backoffMin {
		t.Fatalf("after reset: %v", w)
	}
}
