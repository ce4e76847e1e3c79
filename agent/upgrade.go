package agent

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/tensorlake/tl-agent/internal/handover"
	"github.com/tensorlake/tl-agent/internal/httpx"
	"github.com/tensorlake/tl-agent/process"
	"github.com/tensorlake/tl-agent/pty"
	"github.com/tensorlake/tl-agent/services"
	"github.com/tensorlake/tl-agent/supervisor"
	"github.com/tensorlake/tl-agent/uplink"
)

// Live upgrade (docs/upgrade.md): `tl-agent upgrade PATH` makes PID 1
// execve PATH in place, its state in a sealed memfd (internal/handover).
// This file is the call: verify, the mandatory pre-flight, the answer;
// upgrade_exec.go the quiesce and the exec; upgrade_restore.go the new
// binary's restore and its rollback; upgrade_check.go the pre-flight
// child's dry run.

// Bounds of an upgrade (docs/upgrade.md).
const (
	// upgradeVersionTimeout bounds `PATH version`; upgradeCheckTimeout the
	// pre-flight child (`PATH upgrade-check`). A child past it is killed
	// (its process group) and the upgrade refused.
	upgradeVersionTimeout = 10 * time.Second
	upgradeCheckTimeout   = 30 * time.Second
	// maxChildOutput is what is kept of a child's output (the rest is
	// read and dropped).
	maxChildOutput = 16 << 10
	// maxAnswerText bounds a child's output in an answer, made printable
	// (JSON escaping may grow it 6 times: the answer stays within
	// uplink.MaxLifecycleBody).
	maxAnswerText = 8 << 10
	// maxVersionLen bounds the version `PATH version` prints.
	maxVersionLen = 128
	// maxUpgradeBinary bounds the file hashed for --sha256.
	maxUpgradeBinary = 1 << 30
	// maxRollbackReason bounds the reason a rolled-back agent is told.
	maxRollbackReason = 1024
)

// EnvRollback names the variable a new binary that cannot restore sets
// when it re-execs the old one: the reason (docs/upgrade.md).
const EnvRollback = "TL_AGENT_UPGRADE_ROLLBACK"

// oldBinaryName names the old binary's kept fd in the state: the new
// binary finds it by name, before it reads any section, to roll back.
const oldBinaryName = "old binary"

// testFailRestore is set only in a test build, by
// -ldflags "-X github.com/tensorlake/tl-agent/agent.testFailRestore=1":
// the restore then fails on purpose after every part restored, so the
// rollback is proved against the real binary (docs/upgrade.md).
var testFailRestore string

// handoverPart is a capability's part of a live upgrade (UPGRADE.md):
// Save records its state, Restore rebuilds it in the new binary (checks
// only when r.DryRun()). The parts implement it in their own packages;
// the agent finds them by type assertion (handoverParts).
type handoverPart interface {
	Save(w *handover.Writer) error
	Restore(r *handover.Reader, reaper *supervisor.Reaper) error
}

// freezer is a part with goroutines on fds: Freeze stops them touching
// the fds before the final Save (no fd is closed), Thaw undoes it. A part
// that holds no fd (the boot services' states) need not be one.
type freezer interface {
	Freeze()
	Thaw()
}

// freeze and thaw call the part's Freeze and Thaw, when it has them.
func freeze(p handoverPart) {
	if f, ok := p.(freezer); ok {
		f.Freeze()
	}
}

func thaw(p handoverPart) {
	if f, ok := p.(freezer); ok {
		f.Thaw()
	}
}

// handoverParts are the parts of p that take part in an upgrade, in the
// order they save and restore: the capabilities (PTY sessions, then the
// process table), then the boot services (which name table entries).
func handoverParts(p Parts) []handoverPart {
	var out []handoverPart
	for _, c := range p.Caps {
		if hp, ok := c.(handoverPart); ok {
			out = append(out, hp)
		}
	}
	if p.Boot != nil {
		if hp, ok := any(p.Boot).(handoverPart); ok {
			out = append(out, hp)
		}
	}
	return out
}

// UpgradeRequest is an upgrade call.
type UpgradeRequest struct {
	Path   string `json:"path"`             // the new binary, absolute, inside the sandbox
	SHA256 string `json:"sha256,omitempty"` // its checksum, hex; checked when given
}

// UpgradeRecord is one upgrade as the status reports it.
type UpgradeRecord struct {
	ID   string    `json:"id"`
	From string    `json:"from"`
	To   string    `json:"to"`
	At   time.Time `json:"at"` // when the call came
	// Result: ok (the new binary serves), rolled_back (it could not
	// restore and the old one came back), failed (the exec failed; the
	// old agent went on), refused (verify or pre-flight said no).
	Result string `json:"result"`
	Error  string `json:"error,omitempty"`
	TookMS int64  `json:"took_ms,omitempty"` // from the call to serving again
}

// UpgradeStatus is the upgrade part of the status.
type UpgradeStatus struct {
	State    string         `json:"state"`    // idle, checking, upgrading
	Upgrades int64          `json:"upgrades"` // done in this sandbox's life, over every binary
	Last     *UpgradeRecord `json:"last,omitempty"`
}

// UpgradeAnswer is the call's answer once the pre-flight accepted: the
// exec follows it (docs/upgrade.md says how a caller learns the end).
type UpgradeAnswer struct {
	State  string `json:"state"` // upgrading
	ID     string `json:"id"`
	From   string `json:"from"`
	To     string `json:"to"`
	Check  string `json:"check"` // the pre-flight child's answer
	TookMS int64  `json:"took_ms"`
}

// UpgradeCheckResult is what `tl-agent upgrade-check` prints: one JSON
// line on stdout.
type UpgradeCheckResult struct {
	OK       bool     `json:"ok"`
	Version  string   `json:"version"`
	Protocol int      `json:"protocol"` // the uplink protocol version it speaks
	Sections []string `json:"sections"`
	Pids     int      `json:"pids"`
	Error    string   `json:"error,omitempty"`
}

// upgrader is the agent's upgrade state and what the flow needs that Main
// wires (nil reaper: not wired, upgrades are refused).
type upgrader struct {
	reaper *supervisor.Reaper
	sigs   interface{ ShutdownRequested() bool } // nil in tests
	parts  []handoverPart
	ssh    interface {
		HostKey() (ed25519.PrivateKey, error)
	}
	ready chan struct{} // closed once booted: no upgrade mid-boot
	// The children's deadlines (upgradeVersionTimeout, upgradeCheckTimeout;
	// tests shorten them).
	versionTimeout, checkTimeout time.Duration

	mu       sync.Mutex
	state    string           // guarded by mu
	upgrades int64            // guarded by mu
	last     *UpgradeRecord   // guarded by mu
	main     *supervisor.Proc // guarded by mu; the main command
	ln       net.Listener     // guarded by mu; listen mode's listener
	inherit  net.Listener     // guarded by mu; a restored listener for listenLoop
}

func newUpgrader() *upgrader {
	return &upgrader{state: "idle", ready: make(chan struct{}), versionTimeout: upgradeVersionTimeout, checkTimeout: upgradeCheckTimeout}
}

func (u *upgrader) setState(s string) {
	u.mu.Lock()
	u.state = s
	u.mu.Unlock()
}

func (u *upgrader) record(rec UpgradeRecord) {
	u.mu.Lock()
	u.last = &rec
	if rec.Result == "ok" {
		u.upgrades++
	}
	u.mu.Unlock()
}

func (u *upgrader) status() UpgradeStatus {
	u.mu.Lock()
	defer u.mu.Unlock()
	st := UpgradeStatus{State: u.state, Upgrades: u.upgrades}
	if u.last != nil {
		l := *u.last
		st.Last = &l
	}
	return st
}

// markReady lets upgrades in (Main, once booted).
func (u *upgrader) markReady() {
	select {
	case <-u.ready:
	default:
		close(u.ready)
	}
}

// upgradePlan is an accepted upgrade, between the answer and the exec.
type upgradePlan struct {
	bin  *os.File // the new binary, opened once: every run goes through it
	path string
	rec  UpgradeRecord
}

// upgradeCall is the upgrade lifecycle call; the caller took the
// lifecycle slot, which this releases unless it hands it to the exec
// step it returns (released there if the exec fails).
func (a *Agent) upgradeCall(decode func(any) error) (int, any, func()) {
	var req UpgradeRequest
	if err := decode(&req); err != nil {
		a.life.release()
		return http.StatusBadRequest, errBody("INVALID_REQUEST", "invalid JSON body: "+httpx.JSONErrorText(err)), nil
	}
	code, body, plan := a.upgradeCheck(req)
	if plan == nil {
		a.life.release()
		return code, body, nil
	}
	return code, body, func() {
		defer a.life.release()
		a.execUpgrade(plan)
	}
}

// upgradeCheck runs everything before the exec: the request, the state
// of the agent, the binary, the pre-flight. A refusal changes nothing but
// the status' last upgrade.
func (a *Agent) upgradeCheck(req UpgradeRequest) (int, any, *upgradePlan) {
	u := a.upg
	if err := checkUpgradeRequest(req); err != nil {
		return http.StatusBadRequest, errBody("INVALID_REQUEST", err.Error()), nil
	}
	switch {
	case u.reaper == nil:
		return http.StatusConflict, errBody("UPGRADE_UNAVAILABLE", "this agent was not started by tl-agent's Main: no live upgrade"), nil
	case !isClosed(u.ready):
		return http.StatusConflict, errBody("STARTING", "the agent is still booting (hooks, boot services): retry shortly"), nil
	}
	a.life.mu.Lock()
	prepared := a.life.prepared
	a.life.mu.Unlock()
	if prepared {
		return http.StatusConflict, errBody("PREPARED", "the sandbox is prepared for a snapshot: resume first"), nil
	}
	start := time.Now()
	rec := UpgradeRecord{ID: randomID(), From: a.version, At: start.UTC()}
	u.setState("checking")
	plan, check, err := a.preflight(req, &rec)
	if err != nil {
		u.setState("idle")
		rec.Result, rec.Error = "refused", err.Error()
		u.record(rec)
		a.log.Warn().Err(err).Str("path", req.Path).Str("to", rec.To).Msg("upgrade refused")
		return http.StatusConflict, map[string]string{"error": answerText(err.Error()), "code": "UPGRADE_REFUSED", "check": answerText(check)}, nil
	}
	u.setState("upgrading")
	a.log.Info().Str("path", req.Path).Str("from", rec.From).Str("to", rec.To).Str("id", rec.ID).Msg("upgrade: pre-flight accepted")
	ans := UpgradeAnswer{State: "upgrading", ID: rec.ID, From: rec.From, To: rec.To, Check: answerText(check), TookMS: time.Since(start).Milliseconds()}
	return http.StatusAccepted, ans, plan
}

func checkUpgradeRequest(req UpgradeRequest) error {
	switch {
	case req.Path == "" || !filepath.IsAbs(req.Path) || len(req.Path) > 4096 || strings.ContainsRune(req.Path, 0):
		return errors.New("path: the new binary's absolute path inside the sandbox")
	case req.SHA256 != "":
		if b, err := hex.DecodeString(req.SHA256); err != nil || len(b) != sha256.Size {
			return errors.New("sha256: 64 hex digits")
		}
	}
	return nil
}

// preflight verifies the binary and runs the mandatory dry run on a
// snapshot taken without freezing. It returns the plan, the child's
// answer, or why not.
func (a *Agent) preflight(req UpgradeRequest, rec *UpgradeRecord) (*upgradePlan, string, error) {
	bin, err := openBinary(req.Path, req.SHA256)
	if err != nil {
		return nil, "", err
	}
	ok := false
	defer func() {
		if !ok {
			bin.Close()
		}
	}()
	out, err := a.runChild(bin, nil, a.upg.versionTimeout, "version")
	if err != nil {
		return nil, out, fmt.Errorf("%s version: %w", req.Path, err)
	}
	if rec.To, err = parseVersion(out); err != nil {
		return nil, out, fmt.Errorf("%s version: %w", req.Path, err)
	}
	w, old, err := a.snapshot(*rec)
	if err != nil {
		return nil, "", fmt.Errorf("snapshot: %w", err)
	}
	state, err := w.Seal()
	old.Close()
	if err != nil {
		return nil, "", fmt.Errorf("snapshot: %w", err)
	}
	defer state.Close()
	args := append([]string{"upgrade-check"}, os.Args[1:]...)
	out, err = a.runChild(bin, state, a.upg.checkTimeout, args...)
	res, perr := parseCheck(out)
	switch {
	case perr == nil && !res.OK:
		return nil, out, fmt.Errorf("pre-flight: the new binary refuses the state: %s", res.Error)
	case err != nil:
		return nil, out, fmt.Errorf("pre-flight: %w", err)
	case perr != nil:
		return nil, out, fmt.Errorf("pre-flight: %w", perr)
	case res.Protocol < uplink.VersionLegacy || res.Protocol > uplink.Version:
		return nil, out, fmt.Errorf("pre-flight: the new binary speaks uplink protocol %d; this proxy link accepts %d to %d", res.Protocol, uplink.VersionLegacy, uplink.Version)
	case res.Version != rec.To:
		return nil, out, fmt.Errorf("pre-flight: the check reports version %q, `version` printed %q", res.Version, rec.To)
	}
	ok = true
	return &upgradePlan{bin: bin, path: req.Path, rec: *rec}, strings.TrimSpace(out), nil
}

// openBinary opens path once (every later run goes through this fd, so
// the file checked is the file run) and checks what it can.
func openBinary(path, sum string) (*os.File, error) {
	// O_NONBLOCK: opening a FIFO must not wait for a writer (the call
	// holds the lifecycle slot); a regular file ignores it.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	switch {
	case err != nil:
	case !st.Mode().IsRegular():
		err = fmt.Errorf("%s is not a regular file", path)
	case st.Mode().Perm()&0o111 == 0:
		err = fmt.Errorf("%s is not executable", path)
	case sum != "":
		h := sha256.New()
		n, cerr := io.Copy(h, io.LimitReader(f, maxUpgradeBinary+1))
		got := h.Sum(nil)
		want, _ := hex.DecodeString(sum)
		switch {
		case cerr != nil:
			err = cerr
		case n > maxUpgradeBinary:
			err = fmt.Errorf("%s is over %d bytes", path, maxUpgradeBinary)
		case subtle.ConstantTimeCompare(got, want) != 1:
			err = fmt.Errorf("sha256 mismatch: %s is %x, the call said %s", path, got, strings.ToLower(sum))
		}
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// parseVersion takes the one line `PATH version` printed.
func parseVersion(out string) (string, error) {
	v := strings.TrimSpace(out)
	if v == "" || len(v) > maxVersionLen || strings.ContainsAny(v, "\n\r\x00") {
		return "", fmt.Errorf("printed %q, not a version (one line, 1 to %d bytes)", trimOut(v, 80), maxVersionLen)
	}
	return v, nil
}

// parseCheck reads the pre-flight child's JSON line (the last line of its
// output; anything before is logs or a panic).
func parseCheck(out string) (UpgradeCheckResult, error) {
	var res UpgradeCheckResult
	lines := strings.Split(strings.TrimSpace(out), "\n")
	last := lines[len(lines)-1]
	if err := json.Unmarshal([]byte(last), &res); err != nil {
		return res, fmt.Errorf("the new binary gave no check answer (not an agent of this line, or it crashed): %q", trimOut(out, 400))
	}
	return res, nil
}

// runChild runs the new binary with args, through its fd (as fd 4, so a
// state at fd 3 never collides with it), its output kept up to
// maxChildOutput, killed with its process group after timeout. state
// (nil: none) is the child's fd 3.
func (a *Agent) runChild(bin, state *os.File, timeout time.Duration, args ...string) (string, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return "", err
	}
	defer pr.Close()
	env := execEnv()
	if state != nil {
		env = append(env, handover.EnvFD+"=3")
	}
	cmd := &exec.Cmd{
		Path: "/proc/self/fd/4", Args: append([]string{"tl-agent"}, args...), Env: env,
		Stdout: pw, Stderr: pw, ExtraFiles: []*os.File{state, bin},
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
	}
	p, err := a.upg.reaper.Start(cmd)
	pw.Close()
	if err != nil {
		return "", err
	}
	out := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(pr, maxChildOutput))
		_, _ = io.Copy(io.Discard, pr)
		out <- b
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	killed := false
	select {
	case <-p.Done():
	case <-t.C:
		killed = true
		_ = unix.Kill(-p.Pid, unix.SIGKILL)
		<-p.Done()
	}
	// A descendant that keeps the pipe open must not hold the call.
	_ = pr.SetReadDeadline(time.Now().Add(time.Second))
	b := <-out
	e := p.Wait()
	switch {
	case killed:
		return string(b), fmt.Errorf("no answer within %v (killed)", timeout)
	case e.ExitCode() != 0:
		return string(b), fmt.Errorf("%s: %s", e, trimOut(string(bytes.TrimSpace(b)), 400))
	}
	return string(b), nil
}

// execEnv is the agent's environment for a child or the exec, without
// the upgrade's own variables (the caller adds what it means).
func execEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, handover.EnvFD+"=") || strings.HasPrefix(kv, EnvRollback+"=") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// answerText is a child's output as an answer carries it: valid UTF-8,
// control bytes but newline and tab as '?', at most maxAnswerText bytes.
func answerText(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 && r != '\n' && r != '\t' || r == 0x7f {
			return '?'
		}
		return r
	}, strings.ToValidUTF8(s, "?"))
	return trimOut(s, maxAnswerText)
}

func trimOut(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

func randomID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// listener is listen mode's listener: the one a live upgrade kept, else a
// new one; it is recorded for the next upgrade.
func (u *upgrader) listener(spec string) (net.Listener, error) {
	u.mu.Lock()
	ln := u.inherit
	u.inherit = nil
	u.mu.Unlock()
	if ln == nil {
		var err error
		if ln, err = listen(spec); err != nil {
			return nil, err
		}
	}
	u.mu.Lock()
	u.ln = ln
	u.mu.Unlock()
	return ln, nil
}

// wire gives the upgrader what Main built: the reaper, the signals, the parts that hand state over and the SSH server (its host key).
func (u *upgrader) wire(reaper *supervisor.Reaper, sigs *supervisor.Signals, p Parts, log zerolog.Logger) {
	u.reaper, u.sigs, u.parts = reaper, sigs, handoverParts(p)
	names := make([]string, 0, len(u.parts))
	for _, hp := range u.parts {
		names = append(names, fmt.Sprintf("%T", hp))
	}
	log.Debug().Strs("parts", names).Msg("upgrade: parts that hand state over")
	if s, ok := p.Streams[uplink.KindSSH].(interface {
		HostKey() (ed25519.PrivateKey, error)
	}); ok {
		u.ssh = s
	}
}

// setMain records the main command (nil: none) for the next upgrade.
func (u *upgrader) setMain(p *supervisor.Proc) {
	u.mu.Lock()
	u.main = p
	u.mu.Unlock()
}

// Every capability with state to keep takes part: a method renamed in one
// of them must not drop it from upgrades silently.
var (
	_ handoverPart = (*pty.Manager)(nil)
	_ freezer      = (*pty.Manager)(nil)
	_ handoverPart = (*process.Table)(nil)
	_ freezer      = (*process.Table)(nil)
	_ handoverPart = (*services.Manager)(nil)
)
