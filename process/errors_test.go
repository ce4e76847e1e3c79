package process

import (
	"errors"
	"fmt"
	"testing"

	"github.com/tensorlake/tl-agent/launch"
)

// TestWireCodes: each domain error answers the status and code the API
// has always answered (the wire contract), wrapped or not; the message is
// the one the user was given.
func TestWireCodes(t *testing.T) {
	want := map[error]struct {
		status int
		code   string
	}{
		ErrInvalid: {400, "INVALID_REQUEST"}, ErrBadName: {400, "INVALID_NAME"},
		ErrNameInUse: {409, "NAME_IN_USE"}, ErrBadSignal: {400, "INVALID_SIGNAL"},
		ErrNotRunning: {400, "PROCESS_NOT_RUNNING"}, ErrNotFound: {404, "NOT_FOUND"},
		ErrStdinClosed: {400, "STDIN_NOT_WRITABLE"}, ErrStdinBlocked: {503, "STDIN_BLOCKED"},
		ErrStdinTooLarge: {413, "STDIN_TOO_LARGE"}, ErrStdinTimeout: {408, "STDIN_TIMEOUT"},
		ErrStartFailed: {500, "START_FAILED"}, ErrTooMany: {429, "TOO_MANY_PROCESSES"},
		ErrTooManyFollowers: {429, "TOO_MANY_FOLLOWERS"}, ErrShuttingDown: {503, "SHUTTING_DOWN"},
		ErrBadHealthCheck: {400, "INVALID_HEALTH_CHECK"}, ErrBadRestart: {400, "INVALID_RESTART"},
		ErrRestarting: {409, "RESTART_IN_PROGRESS"}, ErrExhausted: {503, "RESOURCES_EXHAUSTED"},
	}
	if len(want) != len(wireCodes) {
		t.Fatalf("%d domain errors mapped, %d checked: every kind needs its wire code here", len(wireCodes), len(want))
	}
	for kind, w := range want {
		err := fmt.Errorf("context: %w", refuse(kind, "msg %d", 7))
		if status, code := wireError(err); status != w.status || code != w.code {
			t.Errorf("%v answers %d %s, want %d %s", kind, status, code, w.status, w.code)
		}
		if !errors.Is(err, kind) || refuse(kind, "msg %d", 7).Error() != "msg 7" {
			t.Errorf("%v: the refusal must wrap its kind and keep the user's message", kind)
		}
	}
	for kind, code := range map[error]string{launch.ErrUnknownUser: "UNKNOWN_USER", launch.ErrBadDir: "INVALID_WORKING_DIR",
		launch.ErrNotFound: "COMMAND_NOT_FOUND", launch.ErrNotExecutable: "NOT_EXECUTABLE"} {
		if status, got := wireError(fmt.Errorf("x: %w", kind)); status != 400 || got != code {
			t.Errorf("the launcher's %v answers %d %s, want 400 %s", kind, status, got, code)
		}
	}
	if status, code := wireError(errors.New("bug")); status != 500 || code != "INTERNAL" {
		t.Errorf("an unknown error answers %d %s, want 500 INTERNAL", status, code)
	}
}
