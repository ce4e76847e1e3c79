// Package proxy is the reference sandbox proxy: it accepts agents' uplinks,
// keeps the registry of connected sandboxes, and serves users an HTTP front
// door (and, in sshfront.go, an SSH one) that reaches sandboxes over those
// uplinks. It is small on purpose: the real proxy is not ours, but this one
// speaks the same protocol and routes requests the same way.
package proxy

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Config is what the proxy knows. It comes from a JSON file (--config),
// flags, or dev mode, which generates it.
type Config struct {
	// Sandboxes maps a sandbox id to the uplink token its agent presents.
	Sandboxes map[string]SandboxConfig `json:"sandboxes"`
	// APIKeys maps a user API key to a name used in logs.
	APIKeys map[string]string `json:"api_keys"`
	// Domain is the suffix of sandbox host names: <sandbox>.<domain>.
	Domain string `json:"domain,omitempty"`
	// SSHAuthorizedKeys is the path of the users' SSH keys file
	// (authorized_keys format, see docs/ssh.md); empty disables SSH.
	SSHAuthorizedKeys string `json:"ssh_authorized_keys,omitempty"`
	// SSHHostKey is where the proxy's persistent SSH host key lives.
	SSHHostKey string `json:"ssh_host_key,omitempty"`
	// SSHLimits bound each SSH front door user (sshlimits.go).
	SSHLimits SSHLimits `json:"ssh_limits,omitempty"`
}

// SandboxConfig is one known sandbox.
type SandboxConfig struct {
	Token string `json:"token"`
}

// DefaultDomain is the host-name suffix used when the config names none.
const DefaultDomain = "sandbox.localhost"

// LoadConfig reads a JSON config file.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	var c Config
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return &c, c.Validate()
}

// Validate checks the config and fills defaults.
func (c *Config) Validate() error {
	if c.Domain == "" {
		c.Domain = DefaultDomain
	}
	c.Domain = strings.Trim(strings.ToLower(c.Domain), ".")
	if err := c.SSHLimits.validate(); err != nil {
		return err
	}
	if len(c.APIKeys) == 0 {
		return errors.New("config: no api_keys: nobody could use the proxy")
	}
	for id, s := range c.Sandboxes {
		if !ValidSandboxID(id) {
			return fmt.Errorf("config: sandbox id %q: use letters, digits, '-' and '_' (1-64), not starting with digits followed by '-'", id)
		}
		if len(s.Token) < 16 {
			return fmt.Errorf("config: sandbox %s: token shorter than 16 characters", id)
		}
	}
	return nil
}

// ValidSandboxID: ids appear in host names and SSH user names. An id that
// starts "<digits>-" would read as a port route (<port>-<sandbox>).
func ValidSandboxID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	_, _, isPort := splitPortRoute(id)
	return !isPort
}

// RandomHex returns n random bytes as hex: tokens and keys.
func RandomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// DevConfig makes a config for one sandbox with fresh secrets, as dev mode
// prints them for the person running it.
func DevConfig(sandboxID string) *Config {
	return &Config{
		Sandboxes: map[string]SandboxConfig{sandboxID: {Token: RandomHex(32)}},
		APIKeys:   map[string]string{"tl_dev_" + RandomHex(16): "dev"},
		Domain:    DefaultDomain,
	}
}

// Save writes c as JSON, readable by the owner only (it holds secrets).
func (c *Config) Save(path string) error {
	data, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o600)
}
