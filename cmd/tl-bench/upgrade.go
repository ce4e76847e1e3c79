package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/tensorlake/tl-agent/integration"
)

func init() { register("upgrade", benchUpgrade) }

// benchUpgrade measures a live upgrade of PID 1 (docs/upgrade.md) as a
// sandbox's users see it, over N upgrades alternating two builds, against
// the blip of a tl-proxy restart (killed and started again) in the same
// run:
//   - time from `tl-agent upgrade` (inside the sandbox) to the first
//     /api/v1/info through the proxy answered by the new version, and
//     to the call's answer (the pre-flight accepted, before the exec);
//   - the longest gap in a PTY session printing every 10 ms, as a
//     WebSocket client sees it: the client redials as soon as it is cut
//     and takes the replay, so the gap is the time without new output.
func benchUpgrade(e *Env) []Result {
	n := 10
	if e.Quick {
		n = 4
	}
	s := e.System(integration.Options{})
	a, b := integration.MainBuild(e), integration.UpgradeBinary(e, integration.UpgradeVersionB, false)
	paths := map[string]string{
		a.Version: s.InstallFile(e, a.Path, "/opt/tl-upgrade/tl-agent-a"),
		b.Version: s.InstallFile(e, b.Path, "/opt/tl-upgrade/tl-agent-b"),
	}
	w := watchTicker(e, s)
	defer w.close()
	w.settle(e, time.Second)
	quiet := w.window(e, 2*time.Second)

	var serve, call, gaps []time.Duration
	for i := 0; i < n; i++ {
		to := b.Version
		if i%2 == 1 {
			to = a.Version
		}
		w.reset()
		start := time.Now()
		// --wait 0: the call answers once the pre-flight accepted; the
		// serving time is this client's own polling through the proxy.
		if out, err := s.UpgradeInside(paths[to], "--wait", "0"); err != nil {
			e.Fatalf("tl-agent upgrade %s: %v %s", paths[to], err, out)
		}
		call = append(call, time.Since(start))
		serve = append(serve, s.WaitServing(e, to, start, 60*time.Second))
		w.settle(e, 500*time.Millisecond)
		gaps = append(gaps, w.maxGap())
	}
	e.Logf("upgrades: serving again after %v; longest PTY gaps %v; %d client redials", serve, gaps, w.redials())

	// The same with a request in flight (a follow of a quiet process's
	// output, as an SDK's wait holds one): the quiesce gives it its drain
	// time before the exec.
	var fServe, fGaps []time.Duration
	quietProc := startQuietProcess(e, s)
	for i := 0; i < max(2, n/3); i++ {
		to := b.Version
		if (n+i)%2 == 1 {
			to = a.Version
		}
		stopFollow := follow(e, s, quietProc)
		w.reset()
		start := time.Now()
		if out, err := s.UpgradeInside(paths[to], "--wait", "0"); err != nil {
			e.Fatalf("tl-agent upgrade %s: %v %s", paths[to], err, out)
		}
		fServe = append(fServe, s.WaitServing(e, to, start, 60*time.Second))
		stopFollow()
		w.settle(e, 500*time.Millisecond)
		fGaps = append(fGaps, w.maxGap())
		if to == b.Version { // end on the main build for the proxy restarts
			if out, err := s.UpgradeInside(paths[a.Version]); err != nil {
				e.Fatalf("tl-agent upgrade back: %v %s", err, out)
			}
			s.WaitServing(e, a.Version, time.Now(), 60*time.Second)
		}
	}
	e.Logf("upgrades with a follow in flight: serving again after %v; longest PTY gaps %v", fServe, fGaps)

	var pServe, pGaps []time.Duration
	for i := 0; i < n; i++ {
		w.reset()
		start := time.Now()
		s.KillProxy()
		s.StartProxy()
		pServe = append(pServe, s.WaitServing(e, a.Version, start, 60*time.Second))
		w.settle(e, 500*time.Millisecond)
		pGaps = append(pGaps, w.maxGap())
	}
	e.Logf("proxy restarts: serving again after %v; longest PTY gaps %v", pServe, pGaps)
	const note = "floor: tl-proxy killed and restarted"
	return []Result{
		{Name: "upgrade to serving again, p50", Unit: "ms", Ours: Percentile(serve, 50), Floor: Percentile(pServe, 50), Lower: true, Note: note},
		{Name: "upgrade to serving again, max", Unit: "ms", Ours: Percentile(serve, 100), Floor: Percentile(pServe, 100), Lower: true, Note: note},
		{Name: "  pre-flight accepted (the call's answer), p50", Unit: "ms", Ours: Percentile(call, 50), Lower: true, Note: "verify, snapshot, the new binary's dry run"},
		{Name: "longest PTY output gap seen, p50", Unit: "ms", Ours: Percentile(gaps, 50), Floor: Percentile(pGaps, 50), Lower: true, Note: note},
		{Name: "longest PTY output gap seen, max", Unit: "ms", Ours: Percentile(gaps, 100), Floor: Percentile(pGaps, 100), Lower: true, Note: note},
		{Name: "  the same over 2 s with nothing happening", Unit: "ms", Ours: ms(quiet), Lower: true, Note: "the ticker's own period (sleep 0.01 and a fork a line)"},
		{Name: "with a follow in flight: to serving again, p50", Unit: "ms", Ours: Percentile(fServe, 50), Floor: Percentile(pServe, 50), Lower: true, Note: note},
		{Name: "with a follow in flight: longest PTY gap, p50", Unit: "ms", Ours: Percentile(fGaps, 50), Floor: Percentile(pGaps, 50), Lower: true, Note: note},
	}
}

// startQuietProcess starts a process that prints nothing and returns its pid.
func startQuietProcess(e *Env, s *integration.System) int {
	body, _ := json.Marshal(map[string]any{"command": "sleep", "args": []string{"100000"}})
	resp, err := http.DefaultClient.Do(s.Request(context.Background(), "POST", "/api/v1/processes", bytes.NewReader(body)))
	if err != nil {
		e.Fatalf("start: %v", err)
	}
	defer resp.Body.Close()
	var p struct {
		Pid int `json:"pid"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&p); err != nil || resp.StatusCode != http.StatusCreated {
		e.Fatalf("start: %d %v", resp.StatusCode, err)
	}
	return p.Pid
}

// follow opens the output follow of pid and returns once the agent
// answered (the request is in flight until stop).
func follow(e *Env, s *integration.System, pid int) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	resp, err := http.DefaultClient.Do(s.Request(ctx, "GET", "/api/v1/processes/"+strconv.Itoa(pid)+"/output/follow", nil))
	if err != nil || resp.StatusCode != http.StatusOK {
		cancel()
		e.Fatalf("follow: %v", err)
	}
	return func() { cancel(); resp.Body.Close() }
}

// tickWatcher is a WebSocket client of a PTY session that prints a line
// every 10 ms. It redials at once whenever it is cut (every 5 ms until it
// gets in), takes the replay, and records the longest time between two
// arrivals of output it had not seen: the gap a user would see.
type tickWatcher struct {
	s     *integration.System
	id    string
	token string
	stop  chan struct{}
	done  chan struct{}

	mu      sync.Mutex
	seen    int64     // bytes of the session's output seen
	last    time.Time // when new output last arrived
	gap     time.Duration
	dials   int
	lastErr error
}

func watchTicker(e *Env, s *integration.System) *tickWatcher {
	body, _ := json.Marshal(map[string]any{"command": "sh", "args": []string{"-c", "i=0; while :; do echo tick-$i; i=$((i+1)); sleep 0.01; done"}})
	created := createPTY(e, s.Request(context.Background(), "POST", "/api/v1/pty", bytes.NewReader(body)))
	w := &tickWatcher{s: s, id: created["session_id"], token: created["token"], stop: make(chan struct{}), done: make(chan struct{})}
	go w.run()
	return w
}

func (w *tickWatcher) run() {
	defer close(w.done)
	for {
		select {
		case <-w.stop:
			return
		default:
		}
		if err := w.attach(); err != nil {
			w.mu.Lock()
			w.lastErr = err
			w.mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// attach is one connection: READY, then the replay from the start of the
// session's output (the ring holds all of it in a run this short) and
// live output, until the connection ends or stalls for 2 s.
func (w *tickWatcher) attach() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	h := http.Header{"Authorization": {"Bearer " + w.s.APIKey}, "X-PTY-Token": {w.token}}
	c, _, err := websocket.Dial(ctx, w.s.WSURL()+"/api/v1/pty/"+w.id+"/ws", &websocket.DialOptions{HTTPHeader: h, Host: w.s.SandboxID + ".local"})
	cancel()
	if err != nil {
		return err
	}
	defer c.CloseNow()
	c.SetReadLimit(1 << 20)
	w.mu.Lock()
	w.dials++
	w.mu.Unlock()
	if err := c.Write(context.Background(), websocket.MessageBinary, []byte{0x02}); err != nil {
		return err
	}
	var off int64
	for {
		select {
		case <-w.stop:
			return nil
		default:
		}
		rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, msg, err := c.Read(rctx)
		rcancel()
		if err != nil {
			return err
		}
		if len(msg) < 2 || msg[0] != 0x00 {
			continue
		}
		off += int64(len(msg) - 1)
		now := time.Now()
		w.mu.Lock()
		if off > w.seen {
			if !w.last.IsZero() {
				w.gap = max(w.gap, now.Sub(w.last))
			}
			w.seen, w.last = off, now
		}
		w.mu.Unlock()
	}
}

// reset starts a new measurement window.
func (w *tickWatcher) reset() {
	w.mu.Lock()
	w.gap = 0
	w.mu.Unlock()
}

func (w *tickWatcher) maxGap() time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.gap
}

func (w *tickWatcher) redials() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.dials - 1
}

// settle waits until new output has arrived for d without a gap over
// 100 ms (the client is back and live), or fails after 30 s.
func (w *tickWatcher) settle(e *Env, d time.Duration) {
	start := time.Now()
	for since := time.Now(); time.Since(since) < d; time.Sleep(10 * time.Millisecond) {
		w.mu.Lock()
		last, err := w.last, w.lastErr
		w.mu.Unlock()
		if time.Since(last) > 100*time.Millisecond {
			since = time.Now()
		}
		if time.Since(start) > 30*time.Second {
			e.Fatalf("the PTY client got no output for 30 s (last error %v)", err)
		}
	}
}

// window is the longest gap over d with nothing happening.
func (w *tickWatcher) window(e *Env, d time.Duration) time.Duration {
	w.reset()
	time.Sleep(d)
	return w.maxGap()
}

func (w *tickWatcher) close() {
	close(w.stop)
	<-w.done
}
