package services

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/identity"
	"github.com/tensorlake/tl-agent/launch"
	"github.com/tensorlake/tl-agent/supervisor"
)

// HooksDir holds one folder per phase, PHASE.d, relative to the root.
const HooksDir = "/etc/tl-agent/hooks"

// The phases hooks run at. on-boot runs after provisioning and before the
// services; pre-shutdown at a shutdown's start, before the services stop;
// post-resume when the agent finds the sandbox was paused; pre-snapshot
// when the operator (or the lifecycle API) asks, before a snapshot.
const (
	OnBoot      = "on-boot"
	PreSnapshot = "pre-snapshot"
	PostResume  = "post-resume"
	PreShutdown = "pre-shutdown"
)

// Phases are the phases in the order a sandbox's life meets them.
var Phases = []string{OnBoot, PreSnapshot, PostResume, PreShutdown}

// Bounds on hooks: a phase runs at most maxHooks of them, each logged up
// to maxHookLog bytes of output (lines past it are counted, not kept).
const (
	DefaultHookTimeout = 30 * time.Second
	maxHooks           = 32
	maxHookLog         = 16 << 10
	maxHookLine        = 1024
)

// HookResult is how one hook ended.
type HookResult struct {
	Name   string        `json:"name"`
	Exit   string        `json:"exit"`
	Took   time.Duration `json:"took_ns"`
	Killed bool          `json:"killed_at_deadline,omitempty"`
}

// Hooks runs the image's hooks.
type Hooks struct {
	Dir     string        // HooksDir, or a test's
	Timeout time.Duration // each hook's deadline; 0: DefaultHookTimeout
	Reaper  *supervisor.Reaper
	Log     zerolog.Logger
}

// ValidPhase reports whether p names a phase.
func ValidPhase(p string) bool {
	for _, q := range Phases {
		if p == q {
			return true
		}
	}
	return false
}

// Run runs phase's hooks one after another in name order, as root (they
// are the image's own, as s6's and cloud-init's are), each until it exits
// or its deadline (then its group and descendants are SIGKILLed), and
// logs their output and ends. A missing folder is no hooks. ctx ending
// stops the phase after the running hook is killed.
func (h *Hooks) Run(ctx context.Context, phase string) []HookResult {
	paths := hookPaths(filepath.Join(h.Dir, phase+".d"), h.Log)
	var res []HookResult
	for _, p := range paths {
		if ctx.Err() != nil {
			break
		}
		res = append(res, h.runOne(ctx, phase, p))
	}
	return res
}

// hookPaths lists a phase's executables: regular files with an execute
// bit, not hidden, in name order.
func hookPaths(dir string, log zerolog.Logger) []string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		if !os.IsNotExist(err) {
			log.Warn().Err(err).Str("dir", dir).Msg("hooks folder unreadable")
		}
		return nil
	}
	var out []string
	for _, e := range ents {
		info, err := e.Info()
		if err != nil || strings.HasPrefix(e.Name(), ".") || !info.Mode().IsRegular() || info.Mode().Perm()&0o111 == 0 {
			continue
		}
		out = append(out, filepath.Join(dir, e.Name()))
	}
	sort.Strings(out)
	if len(out) > maxHooks {
		log.Warn().Str("dir", dir).Int("hooks", len(out)).Int("run", maxHooks).Msg("too many hooks: the rest are not run")
		out = out[:maxHooks]
	}
	return out
}

func root() *identity.User {
	if u, err := identity.Lookup("root"); err == nil {
		return u
	}
	return &identity.User{Name: "root", Home: "/", Shell: "/bin/sh"}
}

func (h *Hooks) runOne(ctx context.Context, phase, path string) HookResult {
	log := h.Log.With().Str("hook", path).Str("phase", phase).Logger()
	res := HookResult{Name: filepath.Base(path)}
	start := time.Now()
	defer func() { res.Took = time.Since(start) }()
	r, w, err := os.Pipe()
	if err != nil {
		res.Exit = "not started: " + err.Error()
		log.Error().Err(err).Msg("hook not started")
		return res
	}
	defer r.Close()
	c, err := launch.Build(launch.Spec{User: root(), Exe: path, Argv: []string{path}, Dir: "/",
		Env: map[string]string{"TL_HOOK": phase}, Group: launch.NewGroup})
	if err == nil {
		c.Cmd.Stdout, c.Cmd.Stderr = w, w
		var p *supervisor.Proc
		if p, err = launch.Start(c, h.Reaper.Start); err == nil {
			w.Close()
			return h.wait(ctx, log, p, r, res, start)
		}
	}
	w.Close()
	res.Exit = "not started: " + err.Error()
	log.Error().Err(err).Msg("hook not started")
	return res
}

// wait logs p's output until it ends or the deadline kills it.
func (h *Hooks) wait(ctx context.Context, log zerolog.Logger, p *supervisor.Proc, out *os.File, res HookResult, start time.Time) HookResult {
	timeout := h.Timeout
	if timeout <= 0 {
		timeout = DefaultHookTimeout
	}
	logged := make(chan struct{})
	go func() {
		defer close(logged)
		logOutput(log, out)
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.Done():
	case <-t.C:
		res.Killed = true
	case <-ctx.Done():
		res.Killed = true
	}
	if res.Killed {
		supervisor.Kill(syscall.SIGKILL, supervisor.Scope{Group: p.Pid, Descendants: p.Pid})
		<-p.Done()
	}
	// A descendant that left the group may still hold the pipe: stop
	// reading soon after the hook itself ended.
	_ = out.SetReadDeadline(time.Now().Add(time.Second))
	<-logged
	e := p.Wait()
	res.Exit = e.String()
	ev := log.Info()
	if res.Killed || e.Code != 0 || e.Signal != 0 {
		ev = log.Warn()
	}
	ev.Str("exit", res.Exit).Bool("killed_at_deadline", res.Killed).Dur("took", time.Since(start)).Dur("deadline", timeout).Msg("hook ended")
	return res
}

// logOutput logs each output line (cut at maxHookLine), up to maxHookLog
// bytes in all; past that it keeps reading, so a chatty hook never blocks
// on a full pipe, and counts what it drops.
func logOutput(log zerolog.Logger, r *os.File) {
	br := bufio.NewReaderSize(r, maxHookLine)
	logged, dropped := 0, 0
	for {
		line, more, err := br.ReadLine()
		if len(line) > 0 || (err == nil && !more) {
			if logged+len(line) > maxHookLog {
				dropped++
			} else {
				logged += len(line)
				log.Info().Str("line", string(line)).Msg("hook output")
			}
		}
		for more && err == nil { // the rest of an over-long line
			_, more, err = br.ReadLine()
		}
		if err != nil {
			break
		}
	}
	if dropped > 0 {
		log.Warn().Int("dropped_lines", dropped).Msg(fmt.Sprintf("hook output over %d bytes: not logged", maxHookLog))
	}
}
