package integration

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// vmKB reads a field (VmRSS, VmHWM) of /proc/<pid>/status in KiB: the
// tests' one reader of a process's memory.
func vmKB(t TB, pid int, field string) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("status of %d: %v", pid, err)
	}
	n, ok := statusKB(string(data), field)
	if !ok {
		t.Fatalf("no %s in the status of %d", field, pid)
	}
	return n
}

// statusKB is field's value in KiB in the text of a /proc/<pid>/status
// (read here, or through the files API from inside a container).
func statusKB(status, field string) (int64, bool) {
	for _, line := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}
