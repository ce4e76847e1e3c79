// Package services runs what an image declares for boot: services (named,
// supervised processes started in dependency order once each dependency
// is ready, stopped in reverse order at shutdown) and hooks (executables
// run at a lifecycle point with a deadline). Services are the process
// table's supervised processes, so the processes API lists and controls
// them like any other; this package owns only their order and readiness.
//
// An image declares them in files (docs/services.md):
//
//	/etc/tl-agent/services.d/NAME.json   one service each
//	/etc/tl-agent/hooks/PHASE.d/*        executables, run in name order
package services

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/tensorlake/tl-agent/process"
)

// Dir is where an image declares its boot services, relative to its root.
const Dir = "/etc/tl-agent/services.d"

// Bounds on what an image may declare: a file is a small JSON object.
const (
	MaxServices  = 64
	maxFileBytes = 64 << 10
	maxDepends   = 16
)

// Service is one service file: the body of POST /api/v1/processes (the
// same fields, the same rules), plus its dependencies and how to tell it
// is ready.
type Service struct {
	process.StartRequest
	// DependsOn names services that must be ready before this one starts.
	DependsOn []string `json:"depends_on,omitempty"`
	// Ready is the readiness probe (http, tcp or exec, as a health_check),
	// tried until it passes; without one a service is ready once started.
	Ready *process.HealthCheck `json:"ready,omitempty"`

	file string // where it was declared, for messages
}

// ServiceName is the service's name: its name field, else its file's
// name without .json.
func (s *Service) ServiceName() string { return *s.Name }

// Load reads every *.json file in dir (sorted by name) and returns the
// services that are valid, in boot order (each after what it depends on),
// and one error per file or service that is not, naming the file and why.
// A missing dir is no services. Nothing here is fatal: the agent logs the
// errors and boots the rest.
func Load(dir string) ([]Service, []error) {
	names, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, []error{err}
	}
	sort.Strings(names)
	var errs []error
	if len(names) > MaxServices {
		errs = append(errs, fmt.Errorf("%s: %d service files, at most %d are read", dir, len(names), MaxServices))
		names = names[:MaxServices]
	}
	var svcs []Service
	seen := map[string]string{}
	for _, f := range names {
		s, err := readFile(f)
		if err == nil {
			if prev, dup := seen[s.ServiceName()]; dup {
				err = fmt.Errorf("%s: service name %q is already declared by %s", f, s.ServiceName(), prev)
			}
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		seen[s.ServiceName()] = f
		svcs = append(svcs, s)
	}
	ordered, oerrs := order(svcs)
	return ordered, append(errs, oerrs...)
}

// readFile decodes and checks one service file. Unknown fields are
// refused: a misspelt depends_on must not boot silently out of order.
func readFile(path string) (Service, error) {
	f, err := os.Open(path)
	if err != nil {
		return Service{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return Service{}, err
	}
	if !st.Mode().IsRegular() {
		return Service{}, fmt.Errorf("%s: not a regular file", path)
	}
	body, err := io.ReadAll(io.LimitReader(f, maxFileBytes+1))
	if err != nil {
		return Service{}, fmt.Errorf("%s: %w", path, err)
	}
	if len(body) > maxFileBytes {
		return Service{}, fmt.Errorf("%s: larger than %d bytes", path, maxFileBytes)
	}
	s, err := Parse(body)
	if err != nil {
		return Service{}, fmt.Errorf("%s: %w", path, err)
	}
	if s.Name == nil {
		n := strings.TrimSuffix(filepath.Base(path), ".json")
		s.Name = &n
	}
	s.file = path
	if err := s.check(); err != nil {
		return Service{}, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// Parse decodes a service file's body (strict JSON: one object, no
// unknown fields).
func Parse(body []byte) (Service, error) {
	var s Service
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return Service{}, fmt.Errorf("invalid service JSON: %w", err)
	}
	if dec.More() {
		return Service{}, errors.New("invalid service JSON: more than one value")
	}
	return s, nil
}

func (s *Service) check() error {
	if s.Timeout != 0 {
		return errors.New("timeout is for run only; a service runs until stopped")
	}
	if err := process.Check(&s.StartRequest); err != nil {
		return err
	}
	if len(s.DependsOn) > maxDepends {
		return fmt.Errorf("depends_on: at most %d services", maxDepends)
	}
	if s.Ready != nil {
		if _, err := process.NormalizeCheck(s.Ready); err != nil {
			return fmt.Errorf("ready: %s", strings.ReplaceAll(err.Error(), "health_check", "ready"))
		}
	}
	return nil
}

// order sorts svcs so that each comes after its dependencies (Kahn's
// algorithm, ties by name for a stable boot). A service that depends on an
// unknown or invalid service, or on itself through a cycle, is left out
// with an error, and so is everything that depends on it.
func order(svcs []Service) ([]Service, []error) {
	byName := make(map[string]*Service, len(svcs))
	for i := range svcs {
		byName[svcs[i].ServiceName()] = &svcs[i]
	}
	var errs []error
	bad := map[string]bool{}
	for _, s := range svcs {
		for _, d := range s.DependsOn {
			if byName[d] == nil {
				errs = append(errs, fmt.Errorf("%s: depends_on %q: no such valid service", s.file, d))
				bad[s.ServiceName()] = true
			}
		}
	}
	var out []Service
	done := map[string]bool{}
	for len(out)+len(bad) < len(svcs) {
		progressed := false
		for _, s := range svcs {
			n := s.ServiceName()
			if done[n] || bad[n] {
				continue
			}
			ready, blocked := true, false
			for _, d := range s.DependsOn {
				blocked = blocked || bad[d]
				ready = ready && done[d]
			}
			switch {
			case blocked:
				errs = append(errs, fmt.Errorf("%s: depends on a service that cannot start", s.file))
				bad[n] = true
				progressed = true
			case ready:
				out = append(out, s)
				done[n] = true
				progressed = true
			}
		}
		if !progressed { // what is left waits on itself
			for _, s := range svcs {
				if n := s.ServiceName(); !done[n] && !bad[n] {
					errs = append(errs, fmt.Errorf("%s: depends_on forms a cycle", s.file))
					bad[n] = true
				}
			}
		}
	}
	return out, errs
}
