package integration

import "testing"

// rule runs one rule of a scenario test as a subtest named for it. While
// it runs, the harness's own checks (s.JSON, s.Do, ...) report to the
// subtest, so a failure names the rule that broke. Steps run in order and
// share the system; a later rule may rely on an earlier one's state, so a
// broken rule stops the scenario.
func rule(t *testing.T, s *System, name string, f func(t *testing.T)) {
	t.Helper()
	ok := t.Run(name, func(t *testing.T) {
		prev := s.t
		s.t = t
		defer func() { s.t = prev }()
		f(t)
	})
	if !ok {
		t.Fatalf("rule broken: %s", name)
	}
}
