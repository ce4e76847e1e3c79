package process

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/tensorlake/tl-agent/launch"
	"github.com/tensorlake/tl-agent/supervisor"
)

// maxProbeArgs bounds an exec probe's command line.
const maxProbeArgs = 64

func validProbeCommand(h *HealthCheck) error {
	if h.Command == "" {
		return refuse(ErrBadHealthCheck, "health_check.command is required for type exec")
	}
	if len(h.Args) > maxProbeArgs {
		return refuse(ErrBadHealthCheck, "health_check.args: at most %d", maxProbeArgs)
	}
	for _, a := range append([]string{h.Command}, h.Args...) {
		if strings.ContainsRune(a, 0) {
			return refuse(ErrBadHealthCheck, "health_check.command or args hold a NUL byte")
		}
	}
	return nil
}

// execProbe runs an exec check against the supervised process: as its
// user, in its folder, with its environment (a probe sees what the
// service sees), output discarded. Exit 0 passes. At the end of ctx (the
// probe's timeout) its group is killed.
func (m *managed) execProbe(ctx context.Context, h *HealthCheck) error {
	return runProbe(ctx, m.t.reaper, m.spec, h)
}

func runProbe(ctx context.Context, r *supervisor.Reaper, s *spec, h *HealthCheck) error {
	c, err := launch.Build(launch.Spec{
		User: s.user, Argv: append([]string{h.Command}, h.Args...),
		Dir: s.dir, Base: s.env, Group: launch.NewGroup,
	})
	if err != nil {
		return err
	}
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		c.Close()
		return err
	}
	defer null.Close()
	c.Cmd.Stdin, c.Cmd.Stdout, c.Cmd.Stderr = null, null, null
	p, err := launch.Start(c, r.Start)
	if err != nil {
		return err
	}
	select {
	case <-p.Done():
	case <-ctx.Done():
		supervisor.Kill(syscall.SIGKILL, supervisor.Scope{Group: p.Pid, Descendants: p.Pid})
		t := time.NewTimer(killWait)
		defer t.Stop()
		select {
		case <-p.Done():
		case <-t.C:
		}
		return ctx.Err()
	}
	if e := p.Wait(); e.Code != 0 || e.Signal != 0 {
		return fmt.Errorf("%s: %s", h.Command, e)
	}
	return nil
}

// Probe runs check h once against the supervised process name, timed out
// by h's timeout_ms in running time: what a boot service's readiness
// probe is. An error says why it did not pass.
func (t *Table) Probe(ctx context.Context, name string, h *HealthCheck) error {
	_, m, err := t.lookup(name)
	if err != nil {
		return err
	}
	if m == nil {
		return refuse(ErrNotFound, "%s is not supervised", name)
	}
	return probe(ctx, m.clock(), h, m.execProbe)
}

// NormalizeCheck validates a check and fills its defaults, as a
// health_check is.
func NormalizeCheck(h *HealthCheck) (*HealthCheck, error) { return normalizeHealth(h) }

// Check validates what can be known of a start request without the
// sandbox it will run in (no user or PATH lookup): the shape an image's
// build checks (tl-agent provision --root).
func Check(req *StartRequest) error {
	if req.Command == "" {
		return refuse(ErrInvalid, "command is required")
	}
	for _, a := range append([]string{req.Command}, req.Args...) {
		if strings.ContainsRune(a, 0) {
			return refuse(ErrInvalid, "the command or an argument contains a NUL byte")
		}
	}
	for f, v := range map[string][3]string{
		"stdin_mode":  {req.StdinMode, "closed", "pipe"},
		"stdout_mode": {req.StdoutMode, "capture", "discard"},
		"stderr_mode": {req.StderrMode, "capture", "discard"},
	} {
		if _, err := mode(v[0], f, v[1], v[2]); err != nil {
			return err
		}
	}
	if req.Name != nil {
		if err := validName(*req.Name); err != nil {
			return err
		}
	}
	if _, err := normalizeRestart(req.Restart); err != nil {
		return err
	}
	_, err := normalizeHealth(req.HealthCheck)
	return err
}

// Stop ends the supervised process name as a shutdown does: no more
// restarts, sig to its whole tree, then up to wait for the leader's exit;
// past that, SIGKILL. It returns once the process is gone, or the kill's
// own bound passed. Stopping a stopped process is not an error.
func (t *Table) Stop(name string, sig syscall.Signal, wait time.Duration) error {
	_, m, err := t.lookup(name)
	if err != nil {
		return err
	}
	if m == nil {
		return refuse(ErrNotFound, "%s is not supervised", name)
	}
	m.shutdown()
	p := m.current()
	if p == nil || !p.running() {
		m.markStopped()
		return nil
	}
	signalTree(sig, p.pid, p.handle)
	if !sleepRunning(context.Background(), m.clock(), wait, p.done) {
		m.markStopped()
		return nil
	}
	p.kill()
	if sleepRunning(context.Background(), m.clock(), killWait, p.done) {
		return errors.New(name + ": still running after SIGKILL")
	}
	m.markStopped()
	return nil
}

func (m *managed) markStopped() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.status = mStopped
}

// Managed is the state of the supervised process name; false when there
// is none.
func (t *Table) Managed(name string) (ManagedInfo, bool) {
	t.mu.Lock()
	m := t.byName[name]
	t.mu.Unlock()
	if m == nil {
		return ManagedInfo{}, false
	}
	return m.info(), true
}

// PID is the process's pid.
func (p *Process) PID() int { return p.pid }
