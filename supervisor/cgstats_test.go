package supervisor

import "testing"

// TestCgroupReaderHere: on this machine the agent's own cgroup is read
// (memory and pids are figures, not -1) whenever a cgroup mount exists.
func TestCgroupReaderHere(t *testing.T) {
	r := NewCgroupReader()
	if r == nil {
		t.Skip("no cgroup file system")
	}
	st := r.Read()
	t.Logf("%+v", st)
	if st.MemoryBytes <= 0 || st.Pids <= 0 || st.CPUSeconds <= 0 {
		t.Fatalf("cgroup figures not read: %+v (reader %+v)", st, *r)
	}
}
