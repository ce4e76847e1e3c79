package integration

import "testing"

// sandboxReady checks the sandbox user the SSH tests log in as exists:
// the supervisor's provisioning creates it at start.
func sandboxReady(t *testing.T, s *System) {
	t.Helper()
	if out, err := s.Exec("id", "tl-user"); err != nil {
		t.Fatalf("tl-user not provisioned in the sandbox: %v %s", err, out)
	}
}
