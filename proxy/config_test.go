package proxy

import (
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/internal/config/configtest"
)

// Limits: the defaults and zero (a bound turned off) pass; a negative
// bound or timeout is refused by name, not read as "off"; New refuses
// what Validate refuses.
func TestLimitsValidate(t *testing.T) {
	neg := func(what string) string { return "config: limits: " + what + ": must not be negative" }
	base := func() Config { return Config{APIKeys: map[string]string{"k": "n"}, Limits: DefaultLimits()} }
	validate := func(c Config) error { return c.Validate() }
	construct := func(c Config) error { _, err := New(&c, zerolog.Nop()); return err }
	configtest.Run(t, base, validate, construct, []configtest.Case[Config]{
		{Name: "defaults", Mut: func(*Config) {}},
		{Name: "zero turns bounds off", Mut: func(c *Config) { c.Limits = Limits{} }},
		{Name: "HTTPHeaderTimeout", Mut: func(c *Config) { c.Limits.HTTPHeaderTimeout = -time.Second }, Want: neg("HTTPHeaderTimeout is -1s")},
		{Name: "HTTPIdleTimeout", Mut: func(c *Config) { c.Limits.HTTPIdleTimeout = -time.Second }, Want: neg("HTTPIdleTimeout is -1s")},
		{Name: "BodyMinBytes", Mut: func(c *Config) { c.Limits.BodyMinBytes = -1 }, Want: neg("BodyMinBytes is -1")},
		{Name: "BodyWindow", Mut: func(c *Config) { c.Limits.BodyWindow = -time.Second }, Want: neg("BodyWindow is -1s")},
		{Name: "WriteStallTimeout", Mut: func(c *Config) { c.Limits.WriteStallTimeout = -time.Second }, Want: neg("WriteStallTimeout is -1s")},
		{Name: "HTTPConns", Mut: func(c *Config) { c.Limits.HTTPConns = -1 }, Want: neg("HTTPConns is -1")},
		{Name: "HTTPConnsPerSource", Mut: func(c *Config) { c.Limits.HTTPConnsPerSource = -1 }, Want: neg("HTTPConnsPerSource is -1")},
		{Name: "UplinkConns", Mut: func(c *Config) { c.Limits.UplinkConns = -1 }, Want: neg("UplinkConns is -1")},
		{Name: "UplinkConnsPerSource", Mut: func(c *Config) { c.Limits.UplinkConnsPerSource = -1 }, Want: neg("UplinkConnsPerSource is -1")},
		{Name: "SSHConns", Mut: func(c *Config) { c.Limits.SSHConns = -1 }, Want: neg("SSHConns is -1")},
		{Name: "SSHConnsPerSource", Mut: func(c *Config) { c.Limits.SSHConnsPerSource = -1 }, Want: neg("SSHConnsPerSource is -1")},
		{Name: "RequestsPerSandbox", Mut: func(c *Config) { c.Limits.RequestsPerSandbox = -1 }, Want: neg("RequestsPerSandbox is -1")},
		{Name: "BrowserSessions", Mut: func(c *Config) { c.Limits.BrowserSessions = -1 }, Want: neg("BrowserSessions is -1")},
		{Name: "BrowserSessionTTL", Mut: func(c *Config) { c.Limits.BrowserSessionTTL = -time.Second }, Want: neg("BrowserSessionTTL is -1s")},
		{Name: "LoginFailures", Mut: func(c *Config) { c.Limits.LoginFailures = -1 }, Want: neg("LoginFailures is -1")},
		{Name: "LoginWindow", Mut: func(c *Config) { c.Limits.LoginWindow = -time.Second }, Want: neg("LoginWindow is -1s")},
		{Name: "LoginSources", Mut: func(c *Config) { c.Limits.LoginSources = -1 }, Want: neg("LoginSources is -1")},
		{Name: "no API keys", Mut: func(c *Config) { c.APIKeys = nil }, Want: "config: no api_keys"},
		{Name: "bad sandbox id", Mut: func(c *Config) { c.Sandboxes = map[string]SandboxConfig{"A B": {Token: "0123456789abcdef"}} }, Want: "config: sandbox id"},
	})
}
