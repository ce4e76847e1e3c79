package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"
	"time"
)

// Freezing the workload cgroup for a snapshot (docs/lifecycle.md): every
// user process stops where it is, the agent keeps running (it is not in
// the workload) and can still answer, thaw and roll back. cgroup v2 has
// cgroup.freeze in every non-root cgroup; under v1 the workload has a
// freezer cgroup only where the freezer controller is mounted for the
// agent (makeWorkload).

// ErrNoWorkloadFreezer is FreezeWorkload's answer without a freezer.
var ErrNoWorkloadFreezer = errors.New("no workload cgroup with a freezer")

// workloadFreezer is the file to write, the frozen and thawed values, and
// how to tell the freeze has taken.
type workloadFreezer struct {
	file, frozen, thawed string
	done                 func() bool
}

func (h *Headroom) workloadFreezer() (workloadFreezer, error) {
	switch {
	case h == nil || h.st.Workload == "":
		return workloadFreezer{}, ErrNoWorkloadFreezer
	case h.st.Version == "v2":
		dir := h.st.Workload
		return workloadFreezer{file: path.Join(dir, "cgroup.freeze"), frozen: "1", thawed: "0", done: func() bool {
			b, _ := os.ReadFile(path.Join(dir, "cgroup.events"))
			return strings.Contains(string(b), "frozen 1")
		}}, nil
	case h.freezer != "":
		f := path.Join(h.freezer, "freezer.state")
		return workloadFreezer{file: f, frozen: "FROZEN", thawed: "THAWED", done: func() bool {
			b, _ := os.ReadFile(f)
			return strings.TrimSpace(string(b)) == "FROZEN"
		}}, nil
	}
	return workloadFreezer{}, fmt.Errorf("%w: cgroup v1 without the freezer controller", ErrNoWorkloadFreezer)
}

// FreezeWorkload freezes the workload cgroup and waits, within ctx, until
// every task in it is frozen. On failure or deadline it thaws again.
func (h *Headroom) FreezeWorkload(ctx context.Context) error {
	fz, err := h.workloadFreezer()
	if err != nil {
		return err
	}
	if err := os.WriteFile(fz.file, []byte(fz.frozen), 0); err != nil {
		return fmt.Errorf("freeze the workload: %w", err)
	}
	for !fz.done() {
		select {
		case <-ctx.Done():
			_ = os.WriteFile(fz.file, []byte(fz.thawed), 0)
			return fmt.Errorf("the workload did not freeze in time: %w", ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}

// ThawWorkload thaws the workload cgroup (a thawed one is left as is).
func (h *Headroom) ThawWorkload() error {
	fz, err := h.workloadFreezer()
	if err != nil {
		return err
	}
	return os.WriteFile(fz.file, []byte(fz.thawed), 0)
}

// WorkloadFrozen reports whether the workload cgroup is frozen now.
func (h *Headroom) WorkloadFrozen() bool {
	fz, err := h.workloadFreezer()
	return err == nil && fz.done()
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }
