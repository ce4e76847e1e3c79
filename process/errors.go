package process

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/tensorlake/tl-agent/internal/httpx"
	"github.com/tensorlake/tl-agent/launch"
)

// Domain errors of the process table. Each failure wraps one (errors.Is)
// under the message the user sees; wireError, at the HTTP edge, is the one
// place that gives each its status and code. Why a command cannot start
// (not found, not executable, bad dir or env, unknown user) is the
// launcher's to say: its sentinels and codes are shared by every door.
var (
	ErrInvalid          = errors.New("invalid request")
	ErrBadName          = errors.New("bad process name")
	ErrNameInUse        = errors.New("name in use")
	ErrBadSignal        = errors.New("bad signal")
	ErrNotRunning       = errors.New("process not running")
	ErrNotFound         = errors.New("process not found")
	ErrStdinClosed      = errors.New("stdin not writable")
	ErrStdinBlocked     = errors.New("stdin blocked")
	ErrStdinTooLarge    = errors.New("stdin request too large")
	ErrStdinTimeout     = errors.New("stdin body too slow")
	ErrStartFailed      = errors.New("start failed")
	ErrTooMany          = errors.New("too many processes")
	ErrTooManyFollowers = errors.New("too many follow streams")
	ErrShuttingDown     = errors.New("shutting down")
	ErrBadHealthCheck   = errors.New("bad health check")
	ErrBadRestart       = errors.New("bad restart policy")
	ErrRestarting       = errors.New("restart in progress")
	ErrExhausted        = errors.New("out of resources for now")
)

// wireCodes maps each domain error to the API's status and code. The codes
// are the wire contract: they never change with the wording.
var wireCodes = []struct {
	kind   error
	status int
	code   string
}{
	{ErrInvalid, http.StatusBadRequest, codeInvalid},
	{ErrBadName, http.StatusBadRequest, codeBadName},
	{ErrNameInUse, http.StatusConflict, codeNameInUse},
	{ErrBadSignal, http.StatusBadRequest, codeBadSignal},
	{ErrNotRunning, http.StatusBadRequest, codeNotRunning},
	{ErrNotFound, http.StatusNotFound, codeNotFound},
	{ErrStdinClosed, http.StatusBadRequest, codeStdin},
	{ErrStdinBlocked, http.StatusServiceUnavailable, codeStdinBlocked},
	{ErrStdinTooLarge, http.StatusRequestEntityTooLarge, codeStdinTooLarge},
	{ErrStdinTimeout, http.StatusRequestTimeout, codeStdinSlow},
	{ErrStartFailed, http.StatusInternalServerError, codeStartFailed},
	{ErrTooMany, http.StatusTooManyRequests, codeTooMany},
	{ErrTooManyFollowers, http.StatusTooManyRequests, codeTooManyFollow},
	{ErrShuttingDown, http.StatusServiceUnavailable, codeShuttingDown},
	{ErrBadHealthCheck, http.StatusBadRequest, codeBadHealthPath},
	{ErrBadRestart, http.StatusBadRequest, codeInvalidRestart},
	{ErrRestarting, http.StatusConflict, codeRestarting},
	{ErrExhausted, http.StatusServiceUnavailable, codeExhausted},
}

// refusal is a domain error with the message the user sees.
type refusal struct {
	kind error
	msg  string
}

func (e *refusal) Error() string { return e.msg }
func (e *refusal) Unwrap() error { return e.kind }

// refuse returns an error of kind with a formatted message.
func refuse(kind error, format string, args ...any) error {
	return &refusal{kind: kind, msg: fmt.Sprintf(format, args...)}
}

// startRefused is the one retryable answer for a failed fork (or pipe)
// when the kernel is out of pids, memory or fds for now; nil for any other
// failure.
func startRefused(what string, err error) error {
	if !httpx.IsExhausted(err) {
		return nil
	}
	return refuse(ErrExhausted, "%s: the sandbox is out of resources for now (%v); retry later", what, err)
}

// wireError is the HTTP edge: the status and code of err. An error of no
// known kind is a bug, answered 500 INTERNAL.
func wireError(err error) (status int, code string) {
	if status, code, ok := launch.APIError(err); ok {
		return status, code
	}
	for _, w := range wireCodes {
		if errors.Is(err, w.kind) {
			return w.status, w.code
		}
	}
	return http.StatusInternalServerError, "INTERNAL"
}

// writeErr answers err with the spec's error body.
func writeErr(w http.ResponseWriter, err error) {
	status, code := wireError(err)
	httpx.WriteError(w, status, code, err.Error())
}
