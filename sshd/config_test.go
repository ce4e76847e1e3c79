package sshd

import (
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/internal/config/configtest"
)

// Validate: a user is required; the defaults and zero pass; a negative
// bound or timeout is refused by name, never turned into a default; New
// refuses what Validate refuses.
func TestConfigValidate(t *testing.T) {
	u := me(t)
	neg := func(what string) string { return "ssh config: " + what + ": must not be negative" }
	base := func() Config { c := DefaultConfig(); c.User = u; return c }
	configtest.Run(t, base, Config.Validate,
		func(c Config) error { _, err := New(c, zerolog.Nop(), nil); return err },
		[]configtest.Case[Config]{
			{Name: "defaults", Mut: func(*Config) {}},
			{Name: "zero takes the defaults", Mut: func(c *Config) { *c = Config{User: u} }},
			{Name: "no user", Mut: func(c *Config) { c.User = nil }, Want: "ssh config: User is required"},
			{Name: "HandshakeTimeout", Mut: func(c *Config) { c.HandshakeTimeout = -time.Second }, Want: neg("HandshakeTimeout is -1s")},
			{Name: "MaxSessions", Mut: func(c *Config) { c.MaxSessions = -1 }, Want: neg("MaxSessions is -1")},
			{Name: "MaxConns", Mut: func(c *Config) { c.MaxConns = -1 }, Want: neg("MaxConns is -1")},
			{Name: "MaxListenConns", Mut: func(c *Config) { c.MaxListenConns = -1 }, Want: neg("MaxListenConns is -1")},
			{Name: "MaxChannelsPerConn", Mut: func(c *Config) { c.MaxChannelsPerConn = -1 }, Want: neg("MaxChannelsPerConn is -1")},
			{Name: "MaxUnstartedPerConn", Mut: func(c *Config) { c.MaxUnstartedPerConn = -1 }, Want: neg("MaxUnstartedPerConn is -1")},
			{Name: "UnstartedTimeout", Mut: func(c *Config) { c.UnstartedTimeout = -time.Second }, Want: neg("UnstartedTimeout is -1s")},
		})
	if got := (Config{User: u}).withDefaults(); got != base() {
		t.Fatalf("zero fields not defaulted: %+v", got)
	}
}
