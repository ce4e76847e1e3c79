package sftpd

import (
	"testing"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/identity"
	"github.com/tensorlake/tl-agent/internal/config/configtest"
)

// Validate: a user is required, zero MaxSessions takes the default and a
// negative one is refused; New refuses what Validate refuses.
func TestConfigValidate(t *testing.T) {
	u := &identity.User{Name: "x", UID: 4242, GID: 4242, Home: "/"}
	base := func() Config { c := DefaultConfig(); c.User = u; return c }
	configtest.Run(t, base, Config.Validate,
		func(c Config) error { _, err := New(c, zerolog.Nop(), nil); return err },
		[]configtest.Case[Config]{
			{Name: "defaults", Mut: func(*Config) {}},
			{Name: "zero takes the defaults", Mut: func(c *Config) { *c = Config{User: u} }},
			{Name: "no user", Mut: func(c *Config) { c.User = nil }, Want: "sftp config: User is required"},
			{Name: "MaxSessions", Mut: func(c *Config) { c.MaxSessions = -1 }, Want: "sftp config: MaxSessions is -1: must not be negative"},
		})
	s, err := New(Config{User: u}, zerolog.Nop(), nil)
	if err != nil || s.cfg != base() {
		t.Fatalf("zero fields not defaulted: %+v, %v", s, err)
	}
}
