package main

import "github.com/tensorlake/tl-agent/integration"

// benchSandboxReady checks the sandbox user exists (the supervisor's
// provisioning makes it at start).
func benchSandboxReady(e *Env, s *integration.System) {
	if out, err := s.Exec("id", "tl-user"); err != nil {
		e.Fatalf("tl-user not provisioned in the sandbox: %v %s", err, out)
	}
}
