package pty

import (
	"fmt"
	"io/fs"
	"syscall"
	"testing"
)

// A fork the kernel refuses for now is the one retryable answer, not 400.
func TestCreateErrorExhausted(t *testing.T) {
	err := fmt.Errorf("%w: %w", errStart, &fs.PathError{Op: "fork/exec", Path: "/bin/bash", Err: syscall.EAGAIN})
	if status, code := createError(err); status != 503 || code != "RESOURCES_EXHAUSTED" {
		t.Fatalf("EAGAIN from fork: %d %s, want 503 RESOURCES_EXHAUSTED", status, code)
	}
	err = fmt.Errorf("%w: %w", errStart, &fs.PathError{Op: "fork/exec", Path: "/bin/bash", Err: syscall.EACCES})
	if status, code := createError(err); status != 400 || code != "START_FAILED" {
		t.Fatalf("EACCES from fork: %d %s, want 400 START_FAILED", status, code)
	}
}
