package process

import (
	"io/fs"
	"syscall"
	"testing"
)

// Fork's EAGAIN and ENOMEM are the one retryable answer; other failures
// are not.
func TestStartRefused(t *testing.T) {
	for _, errno := range []syscall.Errno{syscall.EAGAIN, syscall.ENOMEM, syscall.EMFILE} {
		err := startRefused("start x", &fs.PathError{Op: "fork/exec", Path: "/bin/x", Err: errno})
		if status, code := wireError(err); err == nil || status != 503 || code != "RESOURCES_EXHAUSTED" {
			t.Errorf("%v: %v (%d %s), want 503 RESOURCES_EXHAUSTED", errno, err, status, code)
		}
	}
	if ae := startRefused("start x", &fs.PathError{Op: "fork/exec", Err: syscall.ENOENT}); ae != nil {
		t.Errorf("ENOENT mapped to %+v: not a resource shortage", ae)
	}
}
