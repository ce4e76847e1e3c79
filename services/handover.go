package services

import (
	"errors"
	"fmt"

	"github.com/tensorlake/tl-agent/internal/handover"
	"github.com/tensorlake/tl-agent/supervisor"
)

// The boot services' part of a live upgrade (internal/handover,
// docs/services.md "Live upgrade"). Their processes are the process
// table's (its own section); what is kept here is each unit's state, so
// the new agent reports the same and starts nothing a second time. It
// holds no fd and no pid, so it needs no Freeze: a start the table's
// freeze refuses waits it out (startService).

// Section is the services' section of the hand-over state.
const Section = "services"

// sectionVersion is the layout of savedUnits this build writes and reads.
const sectionVersion = 1

type savedUnits struct {
	Version int         `json:"version"`
	Units   []savedUnit `json:"units"`
}

type savedUnit struct {
	Name    string `json:"name"`
	State   string `json:"state"`
	Error   string `json:"error,omitempty"`
	Started bool   `json:"started,omitempty"`
}

// Save records every unit's state, in boot order. It copies under the
// lock and changes nothing (the pre-flight calls it on a running agent).
func (m *Manager) Save(w *handover.Writer) error {
	st := savedUnits{Version: sectionVersion, Units: make([]savedUnit, 0, len(m.svcs))}
	m.mu.Lock()
	for _, s := range m.svcs {
		u := m.state[s.ServiceName()]
		st.Units = append(st.Units, savedUnit{Name: s.ServiceName(), State: u.state, Error: u.err, Started: u.started})
	}
	m.mu.Unlock()
	return w.Put(Section, &st)
}

// Restore is Start for an upgraded agent: each unit takes its saved state
// and only what was still to come runs: a waiting unit boots (it starts
// once its dependencies are ready), a starting one is probed until ready;
// a ready, failed or stopped one is left as it was. A service declared
// now but absent from the state (added to the image since, or an older
// agent wrote no section) boots as at a start; a saved unit no longer
// declared is dropped (its process stays in the process table). A unit
// saved waiting (or absent) whose process the table already runs was
// started just before the snapshot: it is probed, not started again. So
// the process table must be restored first. The reaper is unused: the
// processes are the table's. With r.DryRun() it only checks the section.
func (m *Manager) Restore(r *handover.Reader, _ *supervisor.Reaper) error {
	var st savedUnits
	ok, err := r.Section(Section, &st)
	if err != nil {
		return err
	}
	saved := map[string]savedUnit{}
	if ok {
		if saved, err = st.check(); err != nil {
			return err
		}
	}
	if r.DryRun() {
		return nil
	}
	m.apply(saved)
	return nil
}

// running reports whether the (restored) process table has an active
// supervised process of that name.
func (m *Manager) running(name string) bool {
	mi, ok := m.t.Managed(name)
	return ok && mi.Status != "stopped"
}

func (st *savedUnits) check() (map[string]savedUnit, error) {
	if st.Version != sectionVersion {
		return nil, fmt.Errorf("services section: version %d, this build reads %d", st.Version, sectionVersion)
	}
	saved := make(map[string]savedUnit, len(st.Units))
	for _, u := range st.Units {
		switch u.State {
		case StateWaiting, StateStarting, StateReady, StateFailed, StateStopped:
		default:
			return nil, fmt.Errorf("services section: unit %q: state %q", u.Name, u.State)
		}
		if _, dup := saved[u.Name]; dup || u.Name == "" {
			return nil, errors.New("services section: unit name missing or twice: " + u.Name)
		}
		saved[u.Name] = u
	}
	return saved, nil
}

// apply sets the saved states and runs the goroutines Start would have
// left running.
func (m *Manager) apply(saved map[string]savedUnit) {
	m.mu.Lock()
	for name, u := range m.state {
		su, ok := saved[name]
		if !ok {
			continue
		}
		u.state, u.err, u.started = su.State, su.Error, su.Started
		switch su.State {
		case StateReady:
			close(u.ready)
		case StateFailed:
			close(u.dead)
		}
	}
	m.mu.Unlock()
	for i := range m.svcs {
		s := &m.svcs[i]
		su, ok := saved[s.ServiceName()]
		if (!ok || su.State == StateWaiting) && m.running(s.ServiceName()) {
			// Started just before the snapshot, before its unit said
			// so: it is started, not to be started again.
			m.set(m.unit(s.ServiceName()), StateStarting, "", true)
			su, ok = savedUnit{State: StateStarting}, true
		}
		var run func()
		switch {
		case !ok || su.State == StateWaiting:
			run = func() { m.boot(s) }
		case su.State == StateStarting:
			run = func() { m.awaitReady(s, m.unit(s.ServiceName())) }
		default:
			continue
		}
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			run()
		}()
	}
}
