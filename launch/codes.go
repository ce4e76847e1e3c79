package launch

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/tensorlake/tl-agent/identity"
	"github.com/tensorlake/tl-agent/internal/httpx"
	"github.com/tensorlake/tl-agent/internal/threads"
)

// The wire codes of the HTTP APIs that start commands (PTY create,
// process start, run): one set, documented in docs/processes.md
// ("Why a command cannot start"). SSH reports the same refusals as a
// shell does: the words on stderr, ExitStatus.
const (
	CodeNotFound      = "COMMAND_NOT_FOUND"
	CodeNotExecutable = "NOT_EXECUTABLE"
	CodeBadDir        = "INVALID_WORKING_DIR"
	CodeBadEnv        = "INVALID_REQUEST"
	CodeUnknownUser   = "UNKNOWN_USER"
)

// APIError gives the status and code of err when it wraps one of the
// sentinels; ok is false otherwise.
func APIError(err error) (status int, code string, ok bool) {
	switch {
	case errors.Is(err, ErrResourcesExhausted), httpx.IsExhausted(err):
		return http.StatusServiceUnavailable, httpx.CodeResourcesExhausted, true
	case errors.Is(err, ErrNotFound):
		return http.StatusBadRequest, CodeNotFound, true
	case errors.Is(err, ErrNotExecutable):
		return http.StatusBadRequest, CodeNotExecutable, true
	case errors.Is(err, ErrBadDir):
		return http.StatusBadRequest, CodeBadDir, true
	case errors.Is(err, ErrBadEnv):
		return http.StatusBadRequest, CodeBadEnv, true
	case errors.Is(err, ErrUnknownUser):
		return http.StatusBadRequest, CodeUnknownUser, true
	}
	return 0, "", false
}

// ExitStatus is the exit status a shell gives for a command that cannot
// start: 127 when it is not found, 126 when it cannot be run, 1 else.
func ExitStatus(err error) int {
	switch {
	case errors.Is(err, ErrNotFound):
		return 127
	case errors.Is(err, ErrNotExecutable):
		return 126
	}
	return 1
}

// Resolve is identity.Resolve whose every refusal wraps ErrUnknownUser.
func Resolve(s identity.Spec) (*identity.User, error) {
	// Reading /etc/passwd blocks: bounded like every request's file
	// syscalls (internal/threads).
	threads.Blocking.Enter()
	defer threads.Blocking.Leave()
	u, err := identity.Resolve(s)
	if err != nil && !errors.Is(err, ErrUnknownUser) {
		err = fmt.Errorf("%w: %w", ErrUnknownUser, err)
	}
	return u, err
}
