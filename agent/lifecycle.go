package agent

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tensorlake/tl-agent/internal/httpx"
	"github.com/tensorlake/tl-agent/internal/pause"
	"github.com/tensorlake/tl-agent/launch"
	"github.com/tensorlake/tl-agent/services"
	"github.com/tensorlake/tl-agent/supervisor"
)

// The platform's lifecycle calls (docs/lifecycle.md): prepare before a
// snapshot, resume after it (or after a pause), status. They come from the
// platform only: a lifecycle stream the proxy's operator door opens, or
// the root-only control socket; never a user's API key.

// Lifecycle bounds (docs/lifecycle.md).
const (
	// prepareTimeout is a prepare's deadline unless the call sets one;
	// maxPrepareTimeout caps what it may set.
	prepareTimeout    = 10 * time.Second
	maxPrepareTimeout = 60 * time.Second
	// drainWait bounds waiting for in-flight API requests once the gate
	// is closed (a follow stream or WebSocket never ends by itself).
	drainWait = 2 * time.Second
	// maxThawAfter caps a prepare's thaw_after_ms.
	maxThawAfter = 10 * time.Minute
	// clockStepThreshold: a resume steps CLOCK_REALTIME when it is off by
	// more (NTP's own step threshold is 128 ms).
	clockStepThreshold = 100 * time.Millisecond
	// maxSeed bounds a resume's random_seed (decoded).
	maxSeed = 512
	// maxResumeEnv bounds a resume's env: variables, and bytes in all.
	maxResumeEnv, maxResumeEnvBytes = 256, 64 << 10
)

// PrepareRequest is a prepare call.
type PrepareRequest struct {
	// TimeoutMS bounds the whole prepare (hooks, drain, sync, freezes).
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
	// ThawAfterMS: everything is thawed when no resume comes within it.
	ThawAfterMS int64 `json:"thaw_after_ms,omitempty"`
	// FreezeWorkload freezes the workload cgroup (every user process).
	FreezeWorkload bool `json:"freeze_workload,omitempty"`
	// Filesystems are the mount points to FIFREEZE, in order; none: the
	// agent's --freeze-fs.
	Filesystems []string `json:"filesystems,omitempty"`
}

// FSResult is one file system of a prepare.
type FSResult struct {
	Path   string `json:"path"`
	Frozen bool   `json:"frozen"`
	Error  string `json:"error,omitempty"`
}

// PrepareResult says what a prepare did.
type PrepareResult struct {
	State          string                `json:"state"` // prepared, or running after a rollback
	Hooks          []services.HookResult `json:"hooks"`
	GateClosed     bool                  `json:"gate_closed"`
	InFlight       int64                 `json:"api_requests_in_flight"` // still running after the drain wait
	Synced         bool                  `json:"synced"`
	WorkloadFrozen bool                  `json:"workload_frozen"`
	WorkloadError  string                `json:"workload_error,omitempty"`
	Filesystems    []FSResult            `json:"filesystems"`
	ThawAfterMS    int64                 `json:"thaw_after_ms"`
	TookMS         int64                 `json:"took_ms"`
	Error          string                `json:"error,omitempty"`
	RolledBack     bool                  `json:"rolled_back,omitempty"`
}

// ResumeRequest is a resume call.
type ResumeRequest struct {
	// HostTime is the host's wall-clock time (RFC 3339).
	HostTime string `json:"host_time,omitempty"`
	// SandboxID and Token: a clone's new identity; the agent re-registers
	// under them at once. Token alone rotates the secret.
	SandboxID string `json:"sandbox_id,omitempty"`
	Token     string `json:"token,omitempty"`
	// Env is set for every process started from now on (nil: unchanged,
	// {}: cleared).
	Env map[string]string `json:"env,omitempty"`
	// RandomSeed (base64) is mixed into the kernel's pool.
	RandomSeed string `json:"random_seed,omitempty"`
	// PausedMS is how long the host held the sandbox, for logs.
	PausedMS int64 `json:"paused_ms,omitempty"`
}

// ClockResult says what a resume did with the clock.
type ClockResult struct {
	OffsetMS float64 `json:"offset_ms"` // host minus agent, before any step
	Stepped  bool    `json:"stepped"`
	Note     string  `json:"note,omitempty"`
}

// ResumeResult says what a resume did.
type ResumeResult struct {
	State         string       `json:"state"`
	WasPrepared   bool         `json:"was_prepared"`
	Thawed        []string     `json:"thawed"`
	ThawErrors    []string     `json:"thaw_errors,omitempty"`
	Clock         *ClockResult `json:"clock,omitempty"`
	Random        string       `json:"random"`
	EnvVars       int          `json:"env_vars"`
	SandboxID     string       `json:"sandbox_id"`
	NewIdentity   bool         `json:"new_identity"`
	Redial        bool         `json:"redial"`
	PostResume    string       `json:"post_resume_hooks"`
	TookMS        int64        `json:"took_ms"`
	PreparedForMS int64        `json:"prepared_for_ms,omitempty"`
}

// LifecycleStatus is the lifecycle's part of the status.
type LifecycleStatus struct {
	State          string `json:"state"` // running or prepared
	PreparedAt     string `json:"prepared_at,omitempty"`
	ThawAt         string `json:"auto_thaw_at,omitempty"`
	Prepares       int64  `json:"prepares"`
	Resumes        int64  `json:"resumes"`
	RolledBack     int64  `json:"rolled_back"`
	AutoThawed     int64  `json:"auto_thawed"`
	OwnsClock      bool   `json:"owns_clock"`
	LastActivityAt string `json:"last_activity_at,omitempty"`
}

// clockSetter is the seam around CLOCK_REALTIME: tests use a fake, never
// this machine's clock.
type clockSetter interface {
	Now() time.Time
	Set(time.Time) error
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }
func (realClock) Set(t time.Time) error {
	ts := unix.NsecToTimespec(t.UnixNano())
	return unix.ClockSettime(unix.CLOCK_REALTIME, &ts)
}

// undoStep is one thing prepare did, undone at resume or rollback.
type undoStep struct {
	what string
	undo func() error
}

// lifecycle is the agent's lifecycle state: one call at a time (busy).
type lifecycle struct {
	busy chan struct{} // cap 1

	mu         sync.Mutex
	prepared   bool
	preparedAt time.Time
	thawAt     time.Time
	undo       []undoStep
	gen        uint64       // tells a stale auto-thaw from the current prepare
	timer      *pause.Timer // the auto-thaw, in running time
	prepares   int64
	resumes    int64
	rolledBack int64
	autoThawed int64
}

func newLifecycle() *lifecycle { return &lifecycle{busy: make(chan struct{}, 1)} }

// errBusy answers a call while another runs.
var errBusy = errors.New("another lifecycle call is running for this sandbox; retry when it has answered")

func (l *lifecycle) take() bool {
	select {
	case l.busy <- struct{}{}:
		return true
	default:
		return false
	}
}

func (l *lifecycle) release() { <-l.busy }

// prepare runs the steps in order; the first failure rolls back
// everything done so far and answers 409 (500 for a sync failure) with
// what was done.
func (a *Agent) prepare(ctx context.Context, req PrepareRequest) (int, PrepareResult) {
	start := time.Now()
	res := PrepareResult{State: "running", Hooks: []services.HookResult{}, Filesystems: []FSResult{}}
	l := a.life
	l.mu.Lock()
	already := l.prepared
	l.mu.Unlock()
	if already {
		res.State, res.Error = "prepared", "already prepared: resume first"
		return http.StatusConflict, res
	}
	timeout := prepareTimeout
	if req.TimeoutMS > 0 {
		timeout = min(time.Duration(req.TimeoutMS)*time.Millisecond, maxPrepareTimeout)
	}
	thawAfter := a.cfg.ThawAfter
	if req.ThawAfterMS > 0 {
		thawAfter = min(time.Duration(req.ThawAfterMS)*time.Millisecond, maxThawAfter)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	undo, code, err := a.prepareSteps(ctx, req, &res)
	res.TookMS = time.Since(start).Milliseconds()
	if err != nil {
		if ctx.Err() != nil {
			code, err = http.StatusGatewayTimeout, fmt.Errorf("%w (the prepare's deadline, %v, passed)", err, timeout)
		}
		a.rollback(undo)
		l.mu.Lock()
		l.rolledBack++
		l.mu.Unlock()
		res.Error, res.RolledBack, res.GateClosed, res.WorkloadFrozen = err.Error(), true, false, false
		for i := range res.Filesystems {
			res.Filesystems[i].Frozen = false
		}
		a.log.Warn().Err(err).Msg("lifecycle: prepare failed, rolled back")
		return code, res
	}
	l.mu.Lock()
	l.prepared, l.preparedAt, l.thawAt, l.undo = true, time.Now(), time.Now().Add(thawAfter), undo
	l.gen++
	gen := l.gen
	l.prepares++
	// In running time: a sandbox frozen whole for the snapshot (a cgroup
	// freeze, a paused VM) does not count the freeze against the bound.
	l.timer = a.pause.AfterFunc(thawAfter, func() { a.autoThaw(gen, thawAfter) })
	l.mu.Unlock()
	res.State, res.ThawAfterMS = "prepared", thawAfter.Milliseconds()
	a.log.Info().Int64("took_ms", res.TookMS).Bool("workload_frozen", res.WorkloadFrozen).Int("filesystems", len(res.Filesystems)).
		Dur("thaw_after", thawAfter).Msg("lifecycle: prepared for a snapshot")
	return http.StatusOK, res
}

// prepareSteps runs a prepare's steps in order, noting each in res, and
// returns what undoes them; on a failure, what undoes those done so far.
func (a *Agent) prepareSteps(ctx context.Context, req PrepareRequest, res *PrepareResult) ([]undoStep, int, error) {
	var undo []undoStep
	// 1. The image's pre-snapshot hooks: a failing one vetoes the snapshot.
	if a.hooks != nil {
		res.Hooks = append(res.Hooks, a.hooks.Run(ctx, services.PreSnapshot)...)
	}
	for _, h := range res.Hooks {
		if h.Exit != "exit 0" {
			return undo, http.StatusConflict, fmt.Errorf("pre-snapshot hook %s: %s", h.Name, h.Exit)
		}
	}
	if ctx.Err() != nil {
		return undo, http.StatusGatewayTimeout, errors.New("the pre-snapshot hooks ran out of time")
	}
	// 2. No new work: new streams and API requests wait at the gate.
	a.gate.close()
	res.GateClosed = true
	undo = append(undo, undoStep{"gate", func() error { a.gate.open(); return nil }})
	// 3. What the agent holds: in-flight API requests (a file write) end.
	res.InFlight = a.gate.drain(ctx, drainWait)
	// 4. Everything written reaches the disks.
	if err := a.syncFS(ctx); err != nil {
		return undo, http.StatusGatewayTimeout, err
	}
	res.Synced = true
	// 5. The workload cgroup, when asked.
	if req.FreezeWorkload {
		if err := a.headroom.FreezeWorkload(ctx); err != nil {
			res.WorkloadError = err.Error()
			return undo, http.StatusConflict, fmt.Errorf("freeze the workload: %w", err)
		}
		res.WorkloadFrozen = true
		undo = append(undo, undoStep{"workload", a.headroom.ThawWorkload})
	}
	// 6. File systems, in order; one refused or failed fails the prepare.
	paths := req.Filesystems
	if len(paths) == 0 {
		paths = a.cfg.freezeFS()
	}
	for _, p := range paths {
		thaw, err := supervisor.FreezeFS(ctx, p)
		if err != nil {
			res.Filesystems = append(res.Filesystems, FSResult{Path: p, Error: err.Error()})
			return undo, http.StatusConflict, err
		}
		res.Filesystems = append(res.Filesystems, FSResult{Path: p, Frozen: true})
		undo = append(undo, undoStep{"fs " + p, thaw})
	}
	return undo, http.StatusOK, nil
}

// rollback undoes steps in reverse; a step that fails is logged and the
// rest still run.
func (a *Agent) rollback(undo []undoStep) {
	for i := len(undo) - 1; i >= 0; i-- {
		if err := undo[i].undo(); err != nil {
			a.log.Error().Err(err).Str("step", undo[i].what).Msg("lifecycle: rollback step failed")
		}
	}
}

// syncFS is sync(2) within ctx (it cannot be interrupted: on the
// deadline the prepare fails, and the sync goes on by itself).
func (a *Agent) syncFS(ctx context.Context) error {
	done := make(chan struct{})
	go func() { unix.Sync(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("sync did not end before the prepare's deadline")
	}
}

// thawAll undoes a prepare (resume, auto-thaw) and reports what it
// thawed; the caller holds no lock.
func (a *Agent) thawAll() (was bool, thawed, errs []string, preparedFor time.Duration) {
	l := a.life
	l.mu.Lock()
	undo, was := l.undo, l.prepared
	if was {
		preparedFor = time.Since(l.preparedAt)
	}
	l.prepared, l.undo = false, nil
	l.gen++
	if l.timer != nil {
		l.timer.Stop()
	}
	l.mu.Unlock()
	thawed = []string{}
	for i := len(undo) - 1; i >= 0; i-- {
		if err := undo[i].undo(); err != nil {
			errs = append(errs, undo[i].what+": "+err.Error())
			continue
		}
		thawed = append(thawed, undo[i].what)
	}
	return was, thawed, errs, preparedFor
}

// autoThaw thaws a prepare no resume followed within its bound: a failed
// or abandoned snapshot must never leave a live sandbox frozen.
func (a *Agent) autoThaw(gen uint64, after time.Duration) {
	l := a.life
	l.busy <- struct{}{} // after a running call; it may have resumed
	defer l.release()
	l.mu.Lock()
	stale := gen != l.gen || !l.prepared
	if !stale {
		l.autoThawed++
	}
	l.mu.Unlock()
	if stale {
		return
	}
	_, thawed, errs, _ := a.thawAll()
	a.log.Warn().Dur("after", after).Strs("thawed", thawed).Strs("errors", errs).Msg("lifecycle: no resume came: thawed everything")
}

// resume undoes a prepare and brings the sandbox back: clock, randomness,
// environment, identity. The uplink redial and the post-resume hooks
// come after the answer is delivered (the returned function), so the
// link that carries it is not cut first.
func (a *Agent) resume(req ResumeRequest) (int, any, func()) {
	start := time.Now()
	host, seed, err := checkResume(req)
	if err != nil {
		return http.StatusBadRequest, errBody("INVALID_REQUEST", err.Error()), nil
	}
	res := ResumeResult{State: "running", Random: randomNote(len(seed))}
	var pre time.Duration
	res.WasPrepared, res.Thawed, res.ThawErrors, pre = a.thawAll()
	res.PreparedForMS = pre.Milliseconds()
	if !host.IsZero() {
		res.Clock = a.stepClock(host)
	}
	if len(seed) > 0 {
		if err := a.seed(seed); err != nil {
			res.Random = "random_seed not written: " + err.Error()
		}
	}
	if req.Env != nil {
		launch.SetSandboxEnv(req.Env)
		res.EnvVars = len(req.Env)
	}
	if req.SandboxID != "" || req.Token != "" {
		a.setIdentity(req.SandboxID, req.Token)
		res.NewIdentity = true
	}
	res.SandboxID, _ = a.identity()
	res.Redial, res.PostResume = true, "run after this answer, as after any detected pause"
	l := a.life
	l.mu.Lock()
	l.resumes++
	l.mu.Unlock()
	res.TookMS = time.Since(start).Milliseconds()
	a.log.Info().Bool("was_prepared", res.WasPrepared).Strs("thawed", res.Thawed).Bool("new_identity", res.NewIdentity).
		Str("sandbox_id", res.SandboxID).Int64("paused_ms", req.PausedMS).Msg("lifecycle: resumed")
	paused := time.Duration(req.PausedMS) * time.Millisecond
	after := func() {
		// As a pause for every subscriber (uplink redial, post-resume
		// hooks, logs); a freeze the detector already saw is not reported
		// twice, so the link is kicked here for a new identity.
		if !a.pause.Inject(paused) || res.NewIdentity {
			a.kickLink()
		}
	}
	return http.StatusOK, res, after
}

// checkResume validates a resume before anything changes.
func checkResume(req ResumeRequest) (host time.Time, seed []byte, err error) {
	if req.HostTime != "" {
		if host, err = time.Parse(time.RFC3339Nano, req.HostTime); err != nil {
			return host, nil, fmt.Errorf("host_time: want RFC 3339 (2006-01-02T15:04:05.999Z): %v", err)
		}
	}
	if req.SandboxID != "" {
		if err := validSandboxID(req.SandboxID); err != nil {
			return host, nil, err
		}
		if req.Token == "" {
			return host, nil, errors.New("sandbox_id needs its token: a clone's identity is an id and a secret")
		}
	}
	if req.Token != "" && (len(req.Token) < 16 || len(req.Token) > 1024 || strings.ContainsAny(req.Token, "\x00\n\r")) {
		return host, nil, errors.New("token: 16 to 1024 bytes, one line")
	}
	if req.RandomSeed != "" {
		if seed, err = base64.StdEncoding.DecodeString(req.RandomSeed); err != nil || len(seed) > maxSeed {
			return host, nil, fmt.Errorf("random_seed: base64 of at most %d bytes", maxSeed)
		}
	}
	if len(req.Env) > maxResumeEnv {
		return host, nil, fmt.Errorf("env: at most %d variables", maxResumeEnv)
	}
	size := 0
	keys := make([]string, 0, len(req.Env))
	for k, v := range req.Env {
		size += len(k) + len(v)
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		switch {
		case k == "" || strings.ContainsAny(k, "=\x00") || strings.ContainsRune(req.Env[k], 0):
			return host, nil, fmt.Errorf("env %q: a name is non-empty without '=' or NUL, a value has no NUL", k)
		case launch.LoginVar(k):
			return host, nil, fmt.Errorf("env %q: a login variable (HOME, USER, SHELL, PATH, LD_*...) is the login's, not the platform's", k)
		}
	}
	if size > maxResumeEnvBytes {
		return host, nil, fmt.Errorf("env: at most %d bytes in all", maxResumeEnvBytes)
	}
	return host, seed, nil
}

// validSandboxID is the proxy's rule for ids (docs/design.md).
func validSandboxID(id string) error {
	if len(id) == 0 || len(id) > 64 {
		return errors.New("sandbox_id: 1 to 64 characters")
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return errors.New("sandbox_id: lower-case letters, digits, '-' and '_'")
		}
	}
	return nil
}

// stepClock sets CLOCK_REALTIME to host when it is off by more than the
// threshold, only when the agent owns the kernel's clock (--owns-clock: a
// VM). In a container or the namespace sandbox the clock is the host's
// (there is no time namespace for CLOCK_REALTIME): it is only reported.
func (a *Agent) stepClock(host time.Time) *ClockResult {
	off := host.Sub(a.clock.Now())
	c := &ClockResult{OffsetMS: float64(off.Microseconds()) / 1e3}
	switch {
	case off < clockStepThreshold && off > -clockStepThreshold:
		c.Note = fmt.Sprintf("within %v: left alone", clockStepThreshold)
	case !a.cfg.OwnsClock:
		c.Note = "not stepped: the agent does not own the clock (--owns-clock is off: a container's clock is the host's)"
	default:
		// The offset was measured just now; the host's figure ages by the
		// time since it was read.
		if err := a.clock.Set(a.clock.Now().Add(off)); err != nil {
			c.Note = "step failed: " + err.Error()
			break
		}
		c.Stepped = true
		a.log.Warn().Dur("offset", off).Msg("lifecycle: stepped the wall clock to the host's")
	}
	return c
}

// randomNote says how the random state is refreshed (docs/lifecycle.md).
func randomNote(seed int) string {
	if seed > 0 {
		return fmt.Sprintf("%d bytes of the host's seed written to /dev/urandom; Go's crypto/rand reads getrandom(2) at each call, so the agent holds no random state to reseed", seed)
	}
	return "nothing to reseed in the agent (crypto/rand reads getrandom(2) at each call); the kernel reseeds itself on a VM generation change (vmgenid); pass random_seed to mix in the host's"
}

// writeURandom mixes seed into the kernel's pool (a write credits no
// entropy, needs no privilege and cannot harm it).
func writeURandom(seed []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.Write(seed)
	return err
}

func errBody(code, msg string) map[string]string {
	return map[string]string{"error": msg, "code": code}
}

// lifecycleStatus is the status' lifecycle part.
func (a *Agent) lifecycleStatus() LifecycleStatus {
	l := a.life
	l.mu.Lock()
	defer l.mu.Unlock()
	st := LifecycleStatus{State: "running", Prepares: l.prepares, Resumes: l.resumes, RolledBack: l.rolledBack,
		AutoThawed: l.autoThawed, OwnsClock: a.cfg.OwnsClock}
	if l.prepared {
		st.State = "prepared"
		st.PreparedAt = l.preparedAt.UTC().Format(time.RFC3339Nano)
		st.ThawAt = l.thawAt.UTC().Format(time.RFC3339Nano)
	}
	if t := a.activity.Last(); !t.IsZero() {
		st.LastActivityAt = t.UTC().Format(time.RFC3339Nano)
	}
	return st
}

// lifecycleCall runs one call by name: the one entry of both doors. A
// second call while one runs is refused (409 BUSY).
func (a *Agent) lifecycleCall(ctx context.Context, op string, decode func(any) error) (int, any, func()) {
	switch op {
	case "status":
		return http.StatusOK, a.lifecycleStatus(), nil
	case "prepare", "resume", "upgrade":
	default:
		return http.StatusNotFound, errBody("NOT_FOUND", fmt.Sprintf("unknown lifecycle call %q: prepare, resume, upgrade or status", op)), nil
	}
	if !a.life.take() {
		return http.StatusConflict, errBody("BUSY", errBusy.Error()), nil
	}
	if op == "upgrade" {
		return a.upgradeCall(decode) // holds the slot until its exec step (upgrade.go)
	}
	defer a.life.release()
	if op == "prepare" {
		var req PrepareRequest
		if err := decode(&req); err != nil {
			return http.StatusBadRequest, errBody("INVALID_REQUEST", "invalid JSON body: "+httpx.JSONErrorText(err)), nil
		}
		code, res := a.prepare(ctx, req)
		return code, res, nil
	}
	var req ResumeRequest
	if err := decode(&req); err != nil {
		return http.StatusBadRequest, errBody("INVALID_REQUEST", "invalid JSON body: "+httpx.JSONErrorText(err)), nil
	}
	return a.resume(req)
}
