package supervisor

import (
	"os"
	"path"
	"testing"
)

// TestCgroupReaderHere: on this machine the agent's own cgroup is read
// (memory and pids are figures, not -1) whenever a cgroup mount exists.
func TestCgroupReaderHere(t *testing.T) {
	r := NewCgroupReader()
	if r == nil {
		t.Skip("no cgroup file system")
	}
	st := r.Read()
	t.Logf("%+v", st)
	// A v2 root cgroup has no memory.current; every other has it.
	_, memErr := os.Stat(path.Join(r.memory, r.memFile))
	if st.Pids <= 0 || st.CPUSeconds <= 0 || memErr == nil && st.MemoryBytes <= 0 {
		t.Fatalf("cgroup figures not read: %+v (reader %+v)", st, *r)
	}
}
