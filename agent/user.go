package agent

import (
	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/identity"
)

// sandboxUser resolves the sandbox user once, after provisioning. When it
// has no passwd entry (provisioning off or failed on a read-only root) it
// is the configured name and ids, with the home provisioning would have
// made: never another uid than the operator asked for.
func sandboxUser(cfg Config, log zerolog.Logger) *identity.User {
	u, err := identity.Lookup(cfg.User)
	if err == nil {
		return u
	}
	log.Warn().Err(err).Str("user", cfg.User).Int("uid", cfg.UID).Int("gid", cfg.GID).
		Msg("sandbox user not in /etc/passwd: using the configured uid and gid")
	return &identity.User{Name: cfg.User, UID: uint32(cfg.UID), GID: uint32(cfg.GID), Home: "/home/" + cfg.User, Shell: "/bin/sh"}
}
