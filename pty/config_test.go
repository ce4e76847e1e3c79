package pty

import (
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/internal/config/configtest"
)

// Validate: the defaults and zero pass; a negative bound or timeout is
// refused by name, never turned into a default; NewManager refuses what
// Validate refuses.
func TestConfigValidate(t *testing.T) {
	neg := func(what string) string { return "pty config: " + what + ": must not be negative" }
	configtest.Run(t, DefaultConfig, Config.Validate,
		func(c Config) error { _, err := NewManager(c, zerolog.Nop(), nil); return err },
		[]configtest.Case[Config]{
			{Name: "defaults", Mut: func(*Config) {}},
			{Name: "zero takes the defaults", Mut: func(c *Config) { *c = Config{} }},
			{Name: "MaxSessions", Mut: func(c *Config) { c.MaxSessions = -1 }, Want: neg("MaxSessions is -1")},
			{Name: "MaxEnded", Mut: func(c *Config) { c.MaxEnded = -1 }, Want: neg("MaxEnded is -1")},
			{Name: "KeepOutput", Mut: func(c *Config) { c.KeepOutput = -1 }, Want: neg("KeepOutput is -1")},
			{Name: "MaxClients", Mut: func(c *Config) { c.MaxClients = -1 }, Want: neg("MaxClients is -1")},
			{Name: "IdleTimeout", Mut: func(c *Config) { c.IdleTimeout = -time.Second }, Want: neg("IdleTimeout is -1s")},
			{Name: "KeepEnded", Mut: func(c *Config) { c.KeepEnded = -time.Second }, Want: neg("KeepEnded is -1s")},
			{Name: "KillGrace", Mut: func(c *Config) { c.KillGrace = -time.Second }, Want: neg("KillGrace is -1s")},
			{Name: "PingInterval", Mut: func(c *Config) { c.PingInterval = -time.Second }, Want: neg("PingInterval is -1s")},
			{Name: "PongTimeout", Mut: func(c *Config) { c.PongTimeout = -time.Second }, Want: neg("PongTimeout is -1s")},
			{Name: "StallTimeout", Mut: func(c *Config) { c.StallTimeout = -time.Second }, Want: neg("StallTimeout is -1s")},
		})
	if got := (Config{}).withDefaults(); got.MaxSessions != DefaultConfig().MaxSessions || got.StallTimeout != DefaultConfig().StallTimeout {
		t.Fatalf("zero fields not defaulted: %+v", got)
	}
}
