// Command forker is a test helper for the zombie storm: it makes n orphans
// by double forking, each grandchild outliving its parent by a moment so
// that it is reparented to the sandbox's PID 1 before it exits.
//
// It forks with raw clone(2) and no exec, which is far cheaper than
// starting a program per orphan; the children run only raw system calls
// before they exit, so the Go runtime never runs in them.
package main

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"
	"unsafe"
)

func main() {
	n, err := strconv.Atoi(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "usage: forker N")
		os.Exit(2)
	}
	ts := &syscall.Timespec{Nsec: int64(2 * time.Millisecond)}
	made := 0
	for i := 0; i < n; i++ {
		pid, _, errno := syscall.RawSyscall(syscall.SYS_CLONE, uintptr(syscall.SIGCHLD), 0, 0)
		if errno != 0 {
			fmt.Fprintln(os.Stderr, "fork:", errno)
			os.Exit(1)
		}
		if pid == 0 {
			grand, _, _ := syscall.RawSyscall(syscall.SYS_CLONE, uintptr(syscall.SIGCHLD), 0, 0)
			if grand == 0 {
				syscall.RawSyscall(syscall.SYS_NANOSLEEP, uintptr(unsafe.Pointer(ts)), 0, 0)
			}
			syscall.RawSyscall(syscall.SYS_EXIT_GROUP, 0, 0, 0)
		}
		var ws syscall.WaitStatus
		if _, err := syscall.Wait4(int(pid), &ws, 0, nil); err == nil {
			made++
		}
	}
	fmt.Println(made)
}
