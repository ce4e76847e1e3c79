// Package proxy is the reference sandbox proxy: it accepts agents' uplinks,
// keeps the registry of connected sandboxes, and serves users an HTTP front
// door (and, in sshfront.go, an SSH one) that reaches sandboxes over those
// uplinks. It is small on purpose: the real proxy is not ours, but this one
// speaks the same protocol and routes requests the same way.
package proxy

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/tensorlake/tl-agent/internal/config"
	"github.com/tensorlake/tl-agent/internal/httpx"
)

// Config is what the proxy knows. It comes from a JSON file (--config),
// flags, or dev mode, which generates it.
type Config struct {
	// Sandboxes maps a sandbox id to the uplink token its agent presents.
	Sandboxes map[string]SandboxConfig `json:"sandboxes"`
	// APIKeys maps a user API key to a name used in logs. In the file a
	// value is the name, or {"name": ..., "sandboxes": [ids]} to scope the
	// key (see APIKeyScopes).
	APIKeys map[string]string `json:"-"`
	// APIKeyScopes lists, per API key, the sandboxes it may reach. A key
	// absent here (or scoped to "*") reaches every sandbox, as before
	// scoping existed.
	APIKeyScopes map[string][]string `json:"-"`
	// Domain is the suffix of sandbox host names: <sandbox>.<domain>.
	Domain string `json:"domain,omitempty"`
	// SSHAuthorizedKeys is the path of the users' SSH keys file
	// (authorized_keys format, see docs/ssh.md); empty disables SSH.
	SSHAuthorizedKeys string `json:"ssh_authorized_keys,omitempty"`
	// SSHHostKey is where the proxy's persistent SSH host key lives.
	SSHHostKey string `json:"ssh_host_key,omitempty"`
	// SSHLimits bound each SSH front door user (sshlimits.go).
	SSHLimits SSHLimits `json:"ssh_limits,omitempty"`
	// OperatorKeys maps an operator key to a name used in logs: the
	// Bearer credential of the operator door (--operator-addr, operator.go),
	// which is not the users' front door. API keys are not accepted there.
	OperatorKeys map[string]string `json:"operator_keys,omitempty"`
	// OperatorOpenLoopback lets the operator door answer without a key
	// when it listens on a loopback address (a Prometheus beside the
	// proxy). Off by default; ignored on any other address.
	OperatorOpenLoopback bool `json:"operator_open_loopback,omitempty"`

	// Limits are the front doors' bounds; they come from flags, not the
	// file. The zero value turns every bound off (tests that build a
	// Config by hand); tl-proxy starts from DefaultLimits.
	Limits Limits `json:"-"`
}

// apiKeyEntry is an api_keys value written as an object.
type apiKeyEntry struct {
	Name      string   `json:"name"`
	Sandboxes []string `json:"sandboxes"` // [] reaches nothing: kept on save
}

// configFile is Config as written, with api_keys values left raw: each is
// a name (the original format) or an apiKeyEntry.
type configFile struct {
	configAlias
	APIKeys map[string]json.RawMessage `json:"api_keys"`
	// Sandboxes are decoded one by one, so an error names the sandbox.
	Sandboxes map[string]json.RawMessage `json:"sandboxes"`
}

type configAlias Config

// UnmarshalJSON reads api_keys values in both forms.
func (c *Config) UnmarshalJSON(data []byte) error {
	var f configFile
	if err := json.Unmarshal(data, &f); err != nil {
		return err
	}
	*c = Config(f.configAlias)
	c.Sandboxes = make(map[string]SandboxConfig, len(f.Sandboxes))
	for id, raw := range f.Sandboxes {
		var sc SandboxConfig
		if err := json.Unmarshal(raw, &sc); err != nil {
			return fmt.Errorf("sandbox %s: %s", id, httpx.JSONErrorText(err))
		}
		c.Sandboxes[id] = sc
	}
	c.APIKeys, c.APIKeyScopes = map[string]string{}, map[string][]string{}
	for key, raw := range f.APIKeys {
		var name string
		if json.Unmarshal(raw, &name) == nil {
			c.APIKeys[key] = name
			continue
		}
		var e apiKeyEntry
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&e); err != nil {
			// The key itself is a secret: never in an error.
			return fmt.Errorf("api_keys: a value is neither a name nor {\"name\": ..., \"sandboxes\": [...]}: %v", err)
		}
		if e.Sandboxes == nil {
			return fmt.Errorf("api_keys: key named %q: \"sandboxes\" missing (use [\"*\"] for every sandbox)", e.Name)
		}
		c.APIKeys[key] = e.Name
		c.APIKeyScopes[key] = e.Sandboxes
	}
	return nil
}

// MarshalJSON writes a scoped key as an object and any other as its name.
func (c Config) MarshalJSON() ([]byte, error) {
	keys := map[string]any{}
	for k, name := range c.APIKeys {
		if s, ok := c.APIKeyScopes[k]; ok {
			keys[k] = apiKeyEntry{Name: name, Sandboxes: s}
		} else {
			keys[k] = name
		}
	}
	return json.Marshal(struct {
		configAlias
		APIKeys map[string]any `json:"api_keys"`
	}{configAlias(c), keys})
}

// keyScope is what one API key may reach.
type keyScope struct {
	all       bool
	sandboxes map[string]bool
}

func (s keyScope) allows(id string) bool { return s.all || s.sandboxes[id] }

// scopeOf returns the scope of API key key (which must be in APIKeys).
func (c *Config) scopeOf(key string) keyScope {
	ids, ok := c.APIKeyScopes[key]
	if !ok {
		return keyScope{all: true}
	}
	s := keyScope{sandboxes: map[string]bool{}}
	for _, id := range ids {
		if id == "*" {
			s.all = true
		}
		s.sandboxes[id] = true
	}
	return s
}

// Limits bound the front doors (docs/proxy.md). Zero turns a bound off.
type Limits struct {
	// HTTPHeaderTimeout: a request's header must arrive within it.
	HTTPHeaderTimeout time.Duration
	// HTTPIdleTimeout: a keep-alive connection idle this long is closed.
	HTTPIdleTimeout time.Duration
	// A request body must deliver BodyMinBytes in every BodyWindow of the
	// time the proxy spends waiting for it, or it is cut (408).
	BodyMinBytes int64
	BodyWindow   time.Duration
	// WriteStallTimeout: one write to a client (a response chunk, a
	// WebSocket frame) must be taken within it, or the client is dropped.
	WriteStallTimeout time.Duration
	// Live connections per listener, in all and from one source address.
	HTTPConns, HTTPConnsPerSource     int
	UplinkConns, UplinkConnsPerSource int
	SSHConns, SSHConnsPerSource       int
	// RequestsPerSandbox caps concurrent proxied requests and streams
	// (SSE, WebSocket, tunnels) to one sandbox over HTTP (429).
	RequestsPerSandbox int
	// BrowserSessions caps live browser logins (the oldest goes first);
	// BrowserSessionTTL is how long one lasts from login. Zero here
	// means the default: a login needs some bound.
	BrowserSessions   int
	BrowserSessionTTL time.Duration
	// LoginFailures is how many failed browser logins one source (an
	// IPv4 address, an IPv6 /64) may make in a burst, refilled at that
	// many per LoginWindow; past it the login answers 429. LoginSources
	// bounds the sources tracked (loginlimit.go). Zero means the
	// default, as for BrowserSessions.
	LoginFailures int
	LoginWindow   time.Duration
	LoginSources  int
}

// validate refuses a negative bound or timeout: zero turns one off, a
// negative one is a mistake, not another way to say zero.
func (l Limits) validate() error {
	err := config.NonNegative(
		config.Duration("HTTPHeaderTimeout", l.HTTPHeaderTimeout), config.Duration("HTTPIdleTimeout", l.HTTPIdleTimeout),
		config.Int("BodyMinBytes", l.BodyMinBytes), config.Duration("BodyWindow", l.BodyWindow),
		config.Duration("WriteStallTimeout", l.WriteStallTimeout),
		config.Int("HTTPConns", l.HTTPConns), config.Int("HTTPConnsPerSource", l.HTTPConnsPerSource),
		config.Int("UplinkConns", l.UplinkConns), config.Int("UplinkConnsPerSource", l.UplinkConnsPerSource),
		config.Int("SSHConns", l.SSHConns), config.Int("SSHConnsPerSource", l.SSHConnsPerSource),
		config.Int("RequestsPerSandbox", l.RequestsPerSandbox),
		config.Int("BrowserSessions", l.BrowserSessions), config.Duration("BrowserSessionTTL", l.BrowserSessionTTL),
		config.Int("LoginFailures", l.LoginFailures), config.Duration("LoginWindow", l.LoginWindow),
		config.Int("LoginSources", l.LoginSources),
	)
	if err != nil {
		return fmt.Errorf("config: limits: %w", err)
	}
	return nil
}

// DefaultLimits are tl-proxy's bounds unless flags say otherwise. The
// per-source caps are high because on a laptop every client is 127.0.0.1.
func DefaultLimits() Limits {
	return Limits{
		HTTPHeaderTimeout: 20 * time.Second,
		HTTPIdleTimeout:   90 * time.Second,
		BodyMinBytes:      1024,
		BodyWindow:        30 * time.Second,
		WriteStallTimeout: 60 * time.Second,
		HTTPConns:         8192, HTTPConnsPerSource: 2048,
		UplinkConns: 4096, UplinkConnsPerSource: 1024,
		SSHConns: 1024, SSHConnsPerSource: 256,
		RequestsPerSandbox: 1024,
		BrowserSessions:    1024, BrowserSessionTTL: 12 * time.Hour,
		// 10 a minute is plenty for a person mistyping a key, and at most
		// 14,400 guesses a day from one source. 16,384 sources of about
		// 200 bytes each: about 3 MiB.
		LoginFailures: 10, LoginWindow: time.Minute, LoginSources: 16384,
	}
}

// SandboxConfig is one known sandbox.
type SandboxConfig struct {
	Token string `json:"token"`
	// User is the sandbox user (the name the agent was started with,
	// tl-user by default). The SSH front door logs in as it on the SSH
	// server of a <port>-<sandbox> route.
	User string `json:"user,omitempty"`
	// PublicPorts are the ports whose <port>-<sandbox> HTTP route needs
	// no API key (a dev server opened in a browser). Other port routes
	// and every API route still need one.
	PublicPorts []int `json:"public_ports,omitempty"`
}

// isPublic reports whether port is in sandbox id's public_ports.
func (c *Config) isPublic(id string, port int) bool {
	return port != 0 && slices.Contains(c.Sandboxes[id].PublicPorts, port)
}

// validatePorts checks public_ports: each in 1..65535, none twice.
func validatePorts(id string, ports []int) error {
	seen := make(map[int]bool, len(ports))
	for _, p := range ports {
		if p < 1 || p > 65535 {
			return fmt.Errorf("config: sandbox %s: public_ports: port %d out of range 1..65535", id, p)
		}
		if seen[p] {
			return fmt.Errorf("config: sandbox %s: public_ports: port %d listed twice", id, p)
		}
		seen[p] = true
	}
	return nil
}

// DefaultSandboxUser is SandboxConfig.User when the config names none:
// the agent's default user.
const DefaultSandboxUser = "tl-user"

// sandboxUser is the user the proxy logs in as on sandbox id's own SSH
// servers (port routes).
func (c *Config) sandboxUser(id string) string {
	if u := c.Sandboxes[id].User; u != "" {
		return u
	}
	return DefaultSandboxUser
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
		return nil, fmt.Errorf("config %s: %s", path, httpx.JSONErrorText(err))
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
	if err := c.Limits.validate(); err != nil {
		return err
	}
	if len(c.APIKeys) == 0 {
		return errors.New("config: no api_keys: nobody could use the proxy")
	}
	for id, s := range c.Sandboxes {
		if !ValidSandboxID(id) {
			return fmt.Errorf("config: sandbox id %q: use lower-case letters, digits, '-' and '_' (1-64), not starting with digits followed by '-'", id)
		}
		if len(s.Token) < 16 {
			return fmt.Errorf("config: sandbox %s: token shorter than 16 characters", id)
		}
		if !validUserName(s.User) {
			return fmt.Errorf("config: sandbox %s: user %q: use 1-32 letters, digits, '.', '_' or '-', not starting with '-'", id, s.User)
		}
		if err := validatePorts(id, s.PublicPorts); err != nil {
			return err
		}
	}
	for key, name := range c.OperatorKeys {
		if len(key) < 16 {
			return fmt.Errorf("config: operator key %q: shorter than 16 characters", name)
		}
		if _, ok := c.APIKeys[key]; ok {
			return fmt.Errorf("config: operator key %q is also an API key: use a key of its own", name)
		}
	}
	for key, ids := range c.APIKeyScopes {
		if _, ok := c.APIKeys[key]; !ok {
			return fmt.Errorf("config: a scope names an API key that is not in api_keys")
		}
		for _, id := range ids {
			// A typo must not widen the scope, and an id the proxy does
			// not know yet is allowed: it may be added later.
			if id != "*" && !ValidSandboxID(id) {
				return fmt.Errorf("config: api key %q: sandbox id %q in \"sandboxes\" is not a valid id (lower-case letters, digits, '-', '_')", c.APIKeys[key], id)
			}
		}
	}
	return nil
}

// validUserName accepts an empty name (the default) or a portable user
// name (POSIX's portable set, as useradd takes it).
func validUserName(u string) bool {
	if u == "" {
		return true
	}
	if len(u) > 32 || u[0] == '-' {
		return false
	}
	for _, c := range u {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// ValidSandboxID: ids appear in host names and SSH user names. Host names
// are case-insensitive, so ids are lower-case only: "ABC.local" and
// "abc.local" must name one sandbox. An id that starts "<digits>-" would
// read as a port route (<port>-<sandbox>).
func ValidSandboxID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	digits := strings.IndexFunc(id, func(r rune) bool { return r < '0' || r > '9' })
	return digits <= 0 || id[digits] != '-'
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
