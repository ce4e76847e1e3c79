package files

import (
	"testing"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/identity"
	"github.com/tensorlake/tl-agent/internal/config/configtest"
)

// Validate: the owner is required (files written without one would be
// root's); New refuses what Validate refuses.
func TestConfigValidate(t *testing.T) {
	base := func() Config { return Config{Owner: &identity.User{Name: "x", UID: 4242, GID: 4242, Home: "/"}} }
	configtest.Run(t, base, Config.Validate,
		func(c Config) error { _, err := New(c, zerolog.Nop()); return err },
		[]configtest.Case[Config]{
			{Name: "owner", Mut: func(*Config) {}},
			{Name: "no owner", Mut: func(c *Config) { c.Owner = nil }, Want: "files config: Owner is required"},
		})
}
