package process

import (
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/internal/config/configtest"
)

// Validate: the defaults and zero pass; a negative bound or timeout is
// refused by name, never turned into a default; New refuses what Validate
// refuses.
func TestConfigValidate(t *testing.T) {
	neg := func(what string) string { return "process config: " + what + ": must not be negative" }
	configtest.Run(t, DefaultConfig, Config.Validate,
		func(c Config) error { _, err := New(c, zerolog.Nop(), nil); return err },
		[]configtest.Case[Config]{
			{Name: "defaults", Mut: func(*Config) {}},
			{Name: "zero takes the defaults", Mut: func(c *Config) { *c = Config{} }},
			{Name: "MaxLines", Mut: func(c *Config) { c.MaxLines = -1 }, Want: neg("MaxLines is -1")},
			{Name: "MaxBytes", Mut: func(c *Config) { c.MaxBytes = -1 }, Want: neg("MaxBytes is -1")},
			{Name: "MaxLineBytes", Mut: func(c *Config) { c.MaxLineBytes = -1 }, Want: neg("MaxLineBytes is -1")},
			{Name: "KeepExited", Mut: func(c *Config) { c.KeepExited = -time.Second }, Want: neg("KeepExited is -1s")},
			{Name: "MaxExited", Mut: func(c *Config) { c.MaxExited = -1 }, Want: neg("MaxExited is -1")},
			{Name: "ExitedBytes", Mut: func(c *Config) { c.ExitedBytes = -1 }, Want: neg("ExitedBytes is -1")},
			{Name: "TotalBytes", Mut: func(c *Config) { c.TotalBytes = -1 }, Want: neg("TotalBytes is -1")},
			{Name: "MaxLive", Mut: func(c *Config) { c.MaxLive = -1 }, Want: neg("MaxLive is -1")},
			{Name: "ExitGrace", Mut: func(c *Config) { c.ExitGrace = -time.Second }, Want: neg("ExitGrace is -1s")},
			{Name: "StdinTimeout", Mut: func(c *Config) { c.StdinTimeout = -time.Second }, Want: neg("StdinTimeout is -1s")},
			{Name: "MaxStdinBytes", Mut: func(c *Config) { c.MaxStdinBytes = -1 }, Want: neg("MaxStdinBytes is -1")},
			{Name: "StallTimeout", Mut: func(c *Config) { c.StallTimeout = -time.Second }, Want: neg("StallTimeout is -1s")},
			{Name: "MaxFollowers", Mut: func(c *Config) { c.MaxFollowers = -1 }, Want: neg("MaxFollowers is -1")},
			{Name: "MaxFollowersPerProcess", Mut: func(c *Config) { c.MaxFollowersPerProcess = -1 }, Want: neg("MaxFollowersPerProcess is -1")},
		})
	if got := (Config{}).withDefaults(); got != DefaultConfig() {
		t.Fatalf("zero fields not defaulted: %+v", got)
	}
}
