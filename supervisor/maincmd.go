package supervisor

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"github.com/tensorlake/tl-agent/identity"
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
func StartMain(r *Reaper, argv []string, u *identity.User) (*Proc, error) {
	if len(argv) == 0 {
		return nil, errors.New("main command: empty")
	}
	path, err := lookPath(argv[0], u)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(path, argv[1:]...)
	cmd.Args = argv
	cmd.Env = mainEnv(os.Environ(), u)
	cmd.Dir = "/"
	if dir, err := u.Dir(""); err == nil {
		cmd.Dir = dir
	}
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: u.Credential()}
	p, err := r.Start(cmd)
	if err != nil {
		return nil, fmt.Errorf("main command %s: %w", argv[0], err)
	}
	return p, nil
}

// lookPath finds argv0 on the PATH the command will have.
func lookPath(argv0 string, u *identity.User) (string, error) {
	if strings.Contains(argv0, "/") {
		return argv0, nil
	}
	path := os.Getenv("PATH")
	if path == "" {
		path = identity.DefaultPath
	}
	for _, dir := range strings.Split(path, ":") {
		if dir == "" {
			continue
		}
		full := dir + "/" + argv0
		if fi, err := os.Stat(full); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return full, nil
		}
	}
	return "", fmt.Errorf("main command %s: not found in PATH", argv0)
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
