package agent

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/tensorlake/tl-agent/internal/handover"
	"github.com/tensorlake/tl-agent/launch"
	"github.com/tensorlake/tl-agent/supervisor"
	"github.com/tensorlake/tl-agent/uplink"
)

// Restoring reports whether this process was started by a live upgrade
// (or its rollback): the state's memfd is named in the environment. The
// token then comes from the state, not --token-file (whose fd is gone).
func Restoring() bool {
	_, ok := os.LookupEnv(handover.EnvFD)
	return ok
}

// restoring is a start in restore mode (Main): the state, the old
// binary's fd for a rollback, and what restored so far.
type restoring struct {
	r        *handover.Reader
	log      zerolog.Logger
	rollback string // non-empty: the old binary restores after a failed upgrade
	oldFD    int    // the old binary's kept fd, -1: none
	sec      agentSection
	restored []handoverPart
	failed   bool       // the restore failed and could not roll back: a degraded start
	complete bool       // the agent section and every part restored
	old      *os.File   // the old binary, once claimed (applyAgent)
	keep     []*os.File // kept fds taken and still open, closed once restored
	took     time.Time
}

// restoreStart reads the state when the environment names one; nil: a
// normal start. An unreadable state is logged and the agent starts as
// if fresh (there is nothing to hand back to).
func restoreStart(log zerolog.Logger) *restoring {
	reason, _ := os.LookupEnv(EnvRollback)
	os.Unsetenv(EnvRollback)
	r, err := handover.FromEnv()
	if err != nil {
		log.Error().Err(err).Msg("upgrade: the handed-over state is unreadable: starting afresh")
		return nil
	}
	if r == nil {
		return nil
	}
	rs := &restoring{r: r, log: log, rollback: trimOut(reason, maxRollbackReason), oldFD: -1, took: time.Now()}
	for _, f := range r.Unclaimed() {
		if f.Name == oldBinaryName {
			rs.oldFD = f.FD
		}
	}
	return rs
}

// begin reads the agent section, puts what must be in the config before
// the parts are built into cfg (the SSH host key), and adopts every pid
// (before the reaper runs: no exit is lost). A failure rolls back.
func (rs *restoring) begin(cfg *Config, reaper *supervisor.Reaper) {
	ok, err := rs.r.Section("agent", &rs.sec)
	if err == nil && !ok {
		err = errors.New("the state has no agent section")
	}
	if err == nil {
		err = checkAgentSection(rs.sec, rs.r)
	}
	if err == nil {
		// Into the config: even a degraded start (below) registers as
		// the sandbox is now, and serves SSH with its key.
		cfg.SandboxID, cfg.Token = rs.sec.SandboxID, rs.sec.Token
		if len(rs.sec.SSHHostKey) == ed25519.PrivateKeySize {
			key := rs.sec.SSHHostKey
			cfg.SSH.HostKey = &key
		}
		for _, pid := range rs.r.Pids() {
			if _, err = reaper.Adopt(pid); err != nil {
				break
			}
		}
	}
	if err != nil {
		rs.fail(nil, err)
		return
	}
	rs.log.Info().Str("from", rs.r.From()).Int("pids", len(rs.r.Pids())).Strs("sections", rs.r.Sections()).
		Int("uplink_protocol", uplink.Version).Str("rollback", rs.rollback).Msg("upgrade: restoring the handed-over state")
}

// checkAgentSection checks the agent section (also in the dry run).
func checkAgentSection(sec agentSection, r *handover.Reader) error {
	if sec.Version != agentSectionVersion {
		return fmt.Errorf("agent section version %d, this build reads %d", sec.Version, agentSectionVersion)
	}
	if err := validSandboxID(sec.SandboxID); err != nil {
		return err
	}
	if sec.Token == "" {
		return errors.New("agent section: no uplink secret")
	}
	if len(sec.LinkSecrets) > 2 {
		return fmt.Errorf("agent section: %d link secrets, at most 2", len(sec.LinkSecrets))
	}
	if n := len(sec.SSHHostKey); n != 0 && n != ed25519.PrivateKeySize {
		return fmt.Errorf("agent section: an ssh host key of %d bytes", n)
	}
	if sec.MainPid > 0 && !hasPid(r.Pids(), sec.MainPid) {
		return fmt.Errorf("agent section: main command pid %d is not among the state's pids", sec.MainPid)
	}
	return nil
}

func hasPid(pids []int, pid int) bool {
	for _, p := range pids {
		if p == pid {
			return true
		}
	}
	return false
}

// apply restores the agent section into a and every part, in order; the
// main command's Proc is returned for startMain (nil: none). A failure
// rolls back.
func (rs *restoring) apply(a *Agent, reaper *supervisor.Reaper) *supervisor.Proc {
	if rs.failed {
		return nil
	}
	main, err := rs.applyAgent(a, reaper)
	if err == nil {
		for _, p := range a.upg.parts {
			if err = p.Restore(rs.r, reaper); err != nil {
				err = fmt.Errorf("%T: %w", p, err)
				break
			}
			rs.restored = append(rs.restored, p)
		}
	}
	rs.complete = err == nil
	if err == nil && testFailRestore != "" && rs.rollback == "" {
		err = errors.New("test build: the restore fails on purpose (testFailRestore)")
	}
	if err != nil {
		rs.fail(a, err)
		return nil
	}
	rs.r.Close() // fds no part claimed (a section this build does not read)
	rs.old.Close()
	for _, f := range rs.keep {
		f.Close()
	}
	rec := rs.sec.Upgrade
	rec.Result, rec.TookMS = "ok", time.Since(rec.At).Milliseconds()
	if rs.rollback != "" {
		rec.Result, rec.Error = "rolled_back", rs.rollback
		a.log.Error().Str("id", rec.ID).Str("to", rec.To).Str("reason", rs.rollback).Msg("upgrade rolled back: the old agent is back")
	} else {
		a.log.Info().Str("id", rec.ID).Str("from", rec.From).Str("to", a.version).Int64("took_ms", rec.TookMS).
			Dur("restore", time.Since(rs.took)).Msg("upgrade done: serving")
	}
	a.upg.record(rec)
	rs.r, rs.restored = nil, nil // the state's bytes are garbage now (the PTY rings are its bulk)
	return main
}

// applyAgent restores the agent section: identity, environment, listener,
// counters, the main command.
func (rs *restoring) applyAgent(a *Agent, reaper *supervisor.Reaper) (*supervisor.Proc, error) {
	sec := rs.sec
	a.setIdentity(sec.SandboxID, sec.Token)
	a.secrets.restore(sec.LinkSecrets)
	if sec.Env != nil {
		launch.SetSandboxEnv(sec.Env)
	}
	if !sec.Started.IsZero() {
		a.started = sec.Started
	}
	old, err := rs.r.File(sec.OldBinary)
	if err != nil {
		return nil, err
	}
	rs.old = old // kept for a rollback until the restore is done
	u := a.upg
	u.mu.Lock()
	u.upgrades = sec.Upgrades
	u.mu.Unlock()
	if sec.Listener != nil {
		f, err := rs.r.File(*sec.Listener)
		if err != nil {
			return nil, err
		}
		ln, err := fileListener(a.cfg.Listen, f)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("uplink listener: %w", err)
		}
		if _, own := ln.(*vsockListener); !own {
			rs.keep = append(rs.keep, f) // ln holds a dup; the number stays for a rollback
		}
		u.mu.Lock()
		u.inherit, u.ln = ln, ln
		u.mu.Unlock()
	}
	if sec.MainPid <= 0 {
		return nil, nil
	}
	p := reaper.Adopted(sec.MainPid)
	if p == nil {
		return nil, fmt.Errorf("main command pid %d was not adopted", sec.MainPid)
	}
	u.setMain(p)
	return p, nil
}

// fileListener is the listener kept across the exec, as listen(spec)
// would have made it.
func fileListener(spec string, f *os.File) (net.Listener, error) {
	kind, addr, _ := strings.Cut(spec, ":")
	if kind == "vsock" {
		p, err := strconv.ParseUint(addr, 10, 32)
		if err != nil {
			return nil, err
		}
		return &vsockListener{f: f, port: uint32(p)}, nil
	}
	ln, err := net.FileListener(f) // a dup: f stays the caller's
	if err != nil {
		return nil, err
	}
	if kind == "unix" {
		if ul, ok := ln.(*net.UnixListener); ok {
			ul.SetUnlinkOnClose(false)
		}
		return &unlinkListener{Listener: ln, path: addr}, nil
	}
	return ln, nil
}

// fail hands the state back to the old binary (it does not return when
// that works). Without one (a rollback that fails itself, no old binary
// kept) the agent serves what it restored: a degraded start beats ending
// PID 1, and the log says what was lost.
func (rs *restoring) fail(a *Agent, why error) {
	rs.failed = true
	log := rs.log.Error().Err(why)
	if rs.rollback != "" || rs.oldFD < 0 {
		log.Strs("dropped", unclaimedNames(rs.r)).Msg("upgrade: restore failed and there is no binary to roll back to: serving what was restored")
		rs.r.Close()
		return
	}
	log.Msg("upgrade: restore failed: rolling back to the old binary")
	for _, p := range rs.restored {
		freeze(p) // their goroutines stop touching the fds handed back
	}
	var err error
	if rs.complete && a != nil {
		err = rs.execOldResaved(a, why)
	} else {
		err = rs.execOld(why)
	}
	rs.log.Error().Err(err).Strs("dropped", unclaimedNames(rs.r)).Msg("upgrade: the rollback exec failed: serving what was restored")
	rs.r.Close()
	for _, p := range rs.restored {
		thaw(p)
	}
}

// unclaimedNames names the kept fds no part took (what a degraded start
// closes).
func unclaimedNames(r *handover.Reader) []string {
	var out []string
	for _, f := range r.Unclaimed() {
		out = append(out, f.Name)
	}
	return out
}

// execOldResaved hands the restored agent to the old binary: everything
// restored, so a fresh snapshot (as an upgrade takes it, the parts
// frozen) holds it all, output the parts read since the exec included,
// which the state as read (execOld) would lose.
func (rs *restoring) execOldResaved(a *Agent, why error) error {
	w, err := a.snapshotKeeping(rs.sec.Upgrade, rs.old)
	if err != nil {
		return err
	}
	for _, pid := range rs.r.Pids() {
		w.Pid(pid) // adopted, unreaped (the reaper has not run): still ours
	}
	state, undo, err := sealInherited(w)
	if err != nil {
		return err
	}
	defer undo()
	return rs.execOldWith(state, why)
}

// execOld re-execs the old binary in restore mode on the state as read
// (a part failed: what restored before it is frozen and handed back as
// it was).
func (rs *restoring) execOld(why error) error {
	if err := rs.r.Inherit(); err != nil {
		return err
	}
	state, err := rs.r.Reseal()
	if err != nil {
		return err
	}
	defer state.Close()
	err = rs.execOldWith(state, why)
	// Set close-on-exec back on what was handed over: the kept fds belong
	// to the parts that restored (or leak: the log said so).
	for _, f := range rs.r.Unclaimed() {
		_, _ = unix.FcntlInt(uintptr(f.FD), unix.F_SETFD, unix.FD_CLOEXEC)
	}
	return err
}

// execOldWith execs the old binary on state with the rollback's reason.
func (rs *restoring) execOldWith(state *os.File, why error) error {
	fd, err := inheritable(state)
	if err != nil {
		return err
	}
	reason := strings.ReplaceAll(trimOut(why.Error(), maxRollbackReason), "\x00", "")
	env := append(execEnv(), handover.EnvFD+"="+strconv.Itoa(fd), EnvRollback+"="+reason)
	old := rs.old
	if old == nil {
		old = os.NewFile(uintptr(rs.oldFD), oldBinaryName)
	}
	err = execFD(old, os.Args, env)
	runtime.KeepAlive(rs.restored)
	runtime.KeepAlive(rs.keep)
	return err
}
