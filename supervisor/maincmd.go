package supervisor

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/tensorlake/tl-agent/identity"
	"github.com/tensorlake/tl-agent/launch"
)

// ExitNotRunnable is the exit code, as a shell gives it, for a main
// command that could not be started (not found, not executable, no user).
const ExitNotRunnable = 127

// StartMain starts the image's main command (what followed `--`) as u,
// through the reaper, in its own process group so that forwarded signals
// and the shutdown reach its children too. Its stdout and stderr are the
// agent's; stdin is /dev/null.
//
// Its environment is the agent's own minus the agent's settings (TL_AGENT_*
// carries the uplink token), with the user's HOME, USER, LOGNAME and SHELL;
// PATH is kept when the runtime set one (an image's ENV PATH).
//
// The launcher builds it (PATH rule, working dir: the home, or / when it
// does not exist).
func StartMain(r *Reaper, argv []string, u *identity.User) (*Proc, error) {
	if len(argv) == 0 {
		return nil, errors.New("main command: empty")
	}
	c, err := launch.Build(launch.Spec{User: u, Argv: argv, Base: mainEnv(os.Environ(), u), Group: launch.NewGroup})
	if err != nil {
		return nil, fmt.Errorf("main command: %w", err)
	}
	c.Cmd.Stdout, c.Cmd.Stderr = os.Stdout, os.Stderr
	p, err := launch.Start(c, r.Start)
	if err != nil {
		return nil, fmt.Errorf("main command: %w", err)
	}
	return p, nil
}

func mainEnv(env []string, u *identity.User) []string {
	out := make([]string, 0, len(env)+5)
	hasPath := false
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(k, "TL_AGENT_"), strings.HasPrefix(k, "TL_SANDBOX_"):
			continue
		case k == "HOME", k == "USER", k == "LOGNAME", k == "SHELL":
			continue
		case k == "PATH":
			hasPath = true
		}
		out = append(out, kv)
	}
	out = append(out, "HOME="+u.Home, "USER="+u.Name, "LOGNAME="+u.Name, "SHELL="+u.Shell)
	if !hasPath {
		out = append(out, "PATH="+identity.DefaultPath)
	}
	return out
}
