package supervisor

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The workload's freezer files, on a folder standing in for cgroupfs.
func TestWorkloadFreezeFiles(t *testing.T) {
	dir := t.TempDir()
	h := &Headroom{st: HeadroomStatus{Workload: dir, Version: "v2"}}
	events := filepath.Join(dir, "cgroup.events")
	_ = os.WriteFile(events, []byte("populated 1\nfrozen 0\n"), 0o644)
	go func() { // the kernel's part: report the freeze once asked
		for i := 0; i < 400; i++ {
			if b, _ := os.ReadFile(filepath.Join(dir, "cgroup.freeze")); string(b) == "1" {
				_ = os.WriteFile(events, []byte("populated 1\nfrozen 1\n"), 0o644)
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.FreezeWorkload(ctx); err != nil {
		t.Fatal(err)
	}
	if !h.WorkloadFrozen() {
		t.Fatal("not frozen")
	}
	if err := h.ThawWorkload(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "cgroup.freeze")); string(b) != "0" {
		t.Fatalf("cgroup.freeze %q after thaw", b)
	}
	// A freeze that never takes is thawed at the deadline.
	_ = os.WriteFile(events, []byte("frozen 0\n"), 0o644)
	short, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	if err := h.FreezeWorkload(short); err == nil {
		t.Fatal("a freeze that never took succeeded")
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "cgroup.freeze")); string(b) != "0" {
		t.Fatalf("cgroup.freeze %q after a timed-out freeze, want thawed", b)
	}
	v1 := &Headroom{st: HeadroomStatus{Workload: dir, Version: "v1"}}
	if err := v1.FreezeWorkload(ctx); !errors.Is(err, ErrNoWorkloadFreezer) {
		t.Fatalf("v1 without a freezer: %v", err)
	}
}
