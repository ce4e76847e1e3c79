package agent

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tensorlake/tl-agent/internal/handover"
	"github.com/tensorlake/tl-agent/launch"
)

// agentSectionVersion is the version of the agent's own section.
const agentSectionVersion = 1

// agentSection is what the agent hands over besides its parts: what its
// argv cannot say (a resume or a clone may have changed the identity and
// the environment since the start), the fds and pids it owns itself, and
// the upgrade's record.
type agentSection struct {
	Version   int    `json:"version"`
	SandboxID string `json:"sandbox_id"`
	Token     string `json:"token"` // the uplink secret (the memfd is root's: PID 1's fd)
	// LinkSecrets are the secrets to resume the link with, newest first:
	// the proxy takes the base token again only a while after a link
	// ended, a resume at once.
	LinkSecrets [][]byte          `json:"link_secrets,omitempty"`
	Env         map[string]string `json:"env,omitempty"`
	// SSHHostKey is the SSH server's host key, so clients of --ssh-listen
	// see no key change.
	SSHHostKey ed25519.PrivateKey `json:"ssh_host_key,omitempty"`
	Listener   *handover.Ref      `json:"listener,omitempty"` // listen mode's listener
	MainPid    int                `json:"main_pid,omitempty"` // the main command, while it runs
	OldBinary  handover.Ref       `json:"old_binary"`         // for the rollback
	Started    time.Time          `json:"started"`            // the first agent's start (uptime)
	Upgrades   int64              `json:"upgrades"`
	Upgrade    UpgradeRecord      `json:"upgrade"` // this one
}

// snapshot records the agent's state and every part's into a new Writer.
// The returned file is the old binary, kept open (recorded): the caller
// closes it once the state is sealed or the exec failed.
func (a *Agent) snapshot(rec UpgradeRecord) (*handover.Writer, *os.File, error) {
	old, err := os.Open("/proc/self/exe")
	if err != nil {
		return nil, nil, fmt.Errorf("keep the old binary: %w", err)
	}
	w, err := a.snapshotKeeping(rec, old)
	if err != nil {
		old.Close()
		return nil, nil, err
	}
	return w, old, nil
}

// snapshotKeeping is snapshot with bin as the binary to keep for a
// rollback (the caller's, open until the exec).
func (a *Agent) snapshotKeeping(rec UpgradeRecord, bin *os.File) (*handover.Writer, error) {
	u := a.upg
	w := handover.NewWriter(a.version)
	fail := func(err error) (*handover.Writer, error) { return nil, err }
	sec := agentSection{Version: agentSectionVersion, Env: launch.SandboxEnv(), Started: a.started, Upgrade: rec}
	sec.SandboxID, sec.Token = a.identity()
	sec.LinkSecrets = a.secrets.all()
	var err error
	if sec.OldBinary, err = w.File(oldBinaryName, bin); err != nil {
		return fail(err)
	}
	if u.ssh != nil {
		if sec.SSHHostKey, err = u.ssh.HostKey(); err != nil {
			return fail(err)
		}
	}
	u.mu.Lock()
	ln, main, ups := u.ln, u.main, u.upgrades
	u.mu.Unlock()
	sec.Upgrades = ups
	if ln != nil {
		ref, err := listenerRef(w, ln)
		if err != nil {
			return fail(err)
		}
		sec.Listener = &ref
	}
	if main != nil {
		if _, done := main.Exited(); !done {
			w.Pid(main.Pid)
			sec.MainPid = main.Pid
		}
	}
	if err := w.Put("agent", sec); err != nil {
		return fail(err)
	}
	for _, p := range u.parts {
		if err := p.Save(w); err != nil {
			return fail(fmt.Errorf("%T: %w", p, err))
		}
	}
	return w, nil
}

// listenerRef records the listener's own fd (not a dup: the number and
// the socket stay the same).
func listenerRef(w *handover.Writer, ln net.Listener) (handover.Ref, error) {
	if ul, ok := ln.(*unlinkListener); ok {
		ln = ul.Listener
	}
	var sc syscall.Conn
	switch l := ln.(type) {
	case *vsockListener:
		sc = l.f
	case syscall.Conn:
		sc = l
	default:
		return 0, fmt.Errorf("uplink listener %T cannot be kept", ln)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var ref handover.Ref
	var ferr error
	if err := rc.Control(func(fd uintptr) { ref, ferr = w.FD("uplink listener", int(fd)) }); err != nil {
		return 0, err
	}
	return ref, ferr
}

// execUpgrade quiesces the agent and execs the new binary. It returns
// only when the exec failed, with everything undone and the failure in
// the status.
func (a *Agent) execUpgrade(plan *upgradePlan) {
	u := a.upg
	defer plan.bin.Close()
	log := a.log.With().Str("id", plan.rec.ID).Str("to", plan.rec.To).Logger()
	// No new work; what is in flight gets drainWait to end.
	a.gate.close()
	ctx, cancel := context.WithTimeout(context.Background(), drainWait)
	inflight := a.gate.drain(ctx, drainWait)
	cancel()
	for _, p := range u.parts {
		freeze(p)
	}
	// Exits from now on wait as zombies for the new binary's reaper.
	u.reaper.Pause()
	log.Info().Int64("api_requests_in_flight", inflight).Msg("upgrade: quiesced, handing over")
	err := a.execNew(plan)
	// Only a failed exec comes back here.
	u.reaper.Resume()
	for i := len(u.parts) - 1; i >= 0; i-- {
		thaw(u.parts[i])
	}
	a.gate.open()
	u.setState("idle")
	rec := plan.rec
	rec.Result, rec.Error = "failed", err.Error()
	u.record(rec)
	log.Error().Err(err).Msg("upgrade failed: the old agent goes on")
}

// execNew takes the final snapshot and execs; it returns why not.
func (a *Agent) execNew(plan *upgradePlan) error {
	w, old, err := a.snapshot(plan.rec)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	defer old.Close()
	state, undo, err := sealInherited(w)
	if err != nil {
		return err
	}
	defer undo()
	fd, err := inheritable(state)
	if err != nil {
		return err
	}
	env := append(execEnv(), handover.EnvFD+"="+strconv.Itoa(fd))
	if s := a.upg.sigs; s != nil && s.ShutdownRequested() {
		return errors.New("the sandbox is shutting down (SIGTERM or SIGINT came): not exec'd")
	}
	err = execFD(plan.bin, os.Args, env)
	runtime.KeepAlive(old)
	return fmt.Errorf("execve %s: %w", plan.path, err)
}

// sealInherited seals w's state into a memfd and clears close-on-exec on
// every fd it keeps, for an exec; undo (after a failed exec) closes the
// memfd and sets close-on-exec again.
func sealInherited(w *handover.Writer) (*os.File, func(), error) {
	state, err := w.Seal()
	if err != nil {
		return nil, nil, err
	}
	if err := w.Inherit(); err != nil {
		state.Close()
		return nil, nil, err
	}
	return state, func() { w.Uninherit(); state.Close() }, nil
}

// inheritable clears close-on-exec on f and returns its number.
func inheritable(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var ferr error
	if err := rc.Control(func(u uintptr) {
		fd = int(u)
		_, ferr = unix.FcntlInt(u, unix.F_SETFD, 0)
	}); err != nil {
		return -1, err
	}
	return fd, ferr
}

// execFD execs the binary open as f (through /proc/self/fd: the file
// checked is the file run, whatever happened to its path since). It
// returns only on failure.
func execFD(f *os.File, argv, env []string) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var path string
	if err := rc.Control(func(fd uintptr) { path = "/proc/self/fd/" + strconv.Itoa(int(fd)) }); err != nil {
		return err
	}
	if len(argv) == 0 {
		return errors.New("no argv")
	}
	return syscall.Exec(path, argv, env)
}
