package pty

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/tensorlake/tl-agent/internal/handover"
	"github.com/tensorlake/tl-agent/internal/leakcheck"
	"github.com/tensorlake/tl-agent/supervisor"
)

// These tests hand sessions from one Manager to a new one in the same
// process, as a live upgrade does from one agent binary to the next: each
// manager has its own reaper and server; the old one is frozen, saved and
// released (its goroutines end, as at the exec), the new one restores.

// release ends the goroutines of a frozen manager without closing its fds
// or signalling its processes: what the exec does to them.
func (m *Manager) release() {
	close(m.released)
	m.wg.Wait()
}

// agentRig is one "binary": a manager, its reaper and its server.
type agentRig struct {
	*rig
	reaper *supervisor.Reaper
	stop   chan struct{}
	reaped chan struct{}
}

// newAgentRig adopts pids into the reaper before it runs, as the agent
// does in restore mode. The manager is closed at the end of the test
// unless it was handed over.
func newAgentRig(t *testing.T, cfg Config, pids []int) *agentRig {
	t.Helper()
	log := zerolog.Nop()
	a := &agentRig{reaper: supervisor.NewReaper(log, false), stop: make(chan struct{}), reaped: make(chan struct{})}
	for _, pid := range pids {
		if _, err := a.reaper.Adopt(pid); err != nil {
			t.Fatal(err)
		}
	}
	go func() { a.reaper.Run(a.stop); close(a.reaped) }()
	m, err := NewManager(cfg, log, a.reaper)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	m.Routes(mux)
	a.rig = &rig{t: t, m: m, srv: httptest.NewServer(mux)}
	t.Cleanup(func() {
		a.srv.Close()
		select {
		case <-m.released:
		default:
			m.Close()
		}
		a.stopReaper()
	})
	return a
}

func (a *agentRig) stopReaper() {
	select {
	case <-a.stop:
	default:
		close(a.stop)
	}
	<-a.reaped
}

// upgrade freezes a, saves, encodes, releases a, and restores into a new
// agentRig with cfg (adopt: whether its reaper adopts the state's pids).
func upgrade(t *testing.T, a *agentRig, cfg Config, adopt bool) *agentRig {
	t.Helper()
	a.m.Freeze()
	a.stopReaper() // the reaper stops first: exits wait as zombies
	w := handover.NewWriter("test")
	if err := a.m.Save(w); err != nil {
		t.Fatal(err)
	}
	b, err := w.Encode()
	if err != nil {
		t.Fatal(err)
	}
	a.srv.Close()
	a.m.release()
	for _, p := range a.reaper.Live() {
		_ = p.Cmd.Process.Release() // its pidfd, close-on-exec in the agent
	}
	b = renumber(t, a.m, b)
	rd, err := handover.Decode(b, false)
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	if adopt {
		pids = rd.Pids()
	}
	n := newAgentRig(t, cfg, pids)
	if err := n.m.Restore(rd, n.reaper); err != nil {
		t.Fatal(err)
	}
	rd.Close()
	return n
}

// renumber stands in for the exec keeping fd numbers: in one process the
// old *os.File still holds each number on the runtime poller, where the
// new one cannot register it again. So each kept fd is dup'ed (the same
// open terminal, never closed in between), the old file closed, and the
// state given the new numbers.
func renumber(t *testing.T, old *Manager, b []byte) []byte {
	t.Helper()
	var st handover.State
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	moved := map[int]int{}
	for _, s := range old.list() {
		s.mu.Lock()
		ended := s.ended
		s.mu.Unlock()
		if ended {
			continue
		}
		sc, _ := s.master.SyscallConn()
		_ = sc.Control(func(fd uintptr) {
			nfd, err := unix.Dup(int(fd))
			if err != nil {
				t.Fatal(err)
			}
			moved[int(fd)] = nfd
		})
		s.master.Close()
	}
	for i, f := range st.Files {
		nfd, ok := moved[f.FD]
		if !ok {
			t.Fatalf("kept fd %d (%s) is no session's master", f.FD, f.Name)
		}
		st.Files[i].FD = nfd
	}
	out, err := json.Marshal(&st)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// session returns a's session id, failing the test when there is none.
func (a *agentRig) session(id string) *Session {
	a.t.Helper()
	s, err := a.m.get(id)
	if err != nil {
		a.t.Fatalf("session %s: %v", id, err)
	}
	return s
}

// kept is s's kept output and its offsets.
func (s *Session) kept() (start, end int64, data []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	data = make([]byte, s.out.Len())
	s.out.read(s.out.start, data)
	return s.out.start, s.out.end, data
}

// waitOutput waits until s has printed at least n bytes (or want).
func waitOutput(t *testing.T, s *Session, n int64, want string) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		_, end, data := s.kept()
		if end >= n && strings.Contains(string(data), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("session printed %d bytes, want %d with %q", end, n, want)
		}
	}
}

// readN reads output from c until it holds n bytes.
func readN(t *testing.T, c *websocket.Conn, n int) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out bytes.Buffer
	for out.Len() < n {
		_, msg, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("read after %d of %d bytes: %v", out.Len(), n, err)
		}
		if msg[0] == opData {
			out.Write(msg[1:])
		}
	}
	return out.String()
}

func send(t *testing.T, c *websocket.Conn, msg string) {
	t.Helper()
	if err := c.Write(context.Background(), websocket.MessageBinary, []byte(msg)); err != nil {
		t.Fatal(err)
	}
}

// numbered is what `seq 1 n` prints on a terminal (ONLCR: \r\n).
func numbered(n int) string {
	var b strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "%d\r\n", i)
	}
	return b.String()
}

// TestHandoverRoundTrip: detached sessions with output cross to a new
// manager with the same offsets and bytes; a client attaching gets the
// replay exactly, from offset 0 and, where the ring wrapped, from a middle
// offset; input reaches the program; the exit status arrives; the client
// attached at the upgrade is closed with 1012.
func TestHandoverRoundTrip(t *testing.T) {
	cfg := Config{KeepOutput: 16 << 10}
	old := newAgentRig(t, cfg, nil)
	idA, tokA := old.create(map[string]any{"command": "sh", "args": []string{"-c", "echo before; read x; echo got-$x; exit 5"}})
	idB, tokB := old.create(map[string]any{"command": "sh", "args": []string{"-c", "seq 1 5000; read x; exit 7"}})
	seq := numbered(5000)
	waitOutput(t, old.session(idA), 0, "before")
	waitOutput(t, old.session(idB), int64(len(seq)), "")
	attached := old.dial(idA, tokA)
	send(t, attached, "\x02")
	readN(t, attached, len("before\r\n"))
	startA, endA, dataA := old.session(idA).kept()
	startB, endB, dataB := old.session(idB).kept()
	if startB == 0 || endB != int64(len(seq)) {
		t.Fatalf("session B kept [%d, %d): want a wrapped ring ending at %d", startB, endB, len(seq))
	}
	replayB := func() int64 { s := old.session(idB); s.mu.Lock(); defer s.mu.Unlock(); return s.out.replayStart() }()

	n := upgrade(t, old, cfg, true)

	_, _, err := readUntilClose(t, attached)
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.StatusServiceRestart {
		t.Fatalf("client attached at the upgrade: close %v, want 1012", err)
	}
	if s, e, d := n.session(idA).kept(); s != startA || e != endA || !bytes.Equal(d, dataA) {
		t.Fatalf("session A kept [%d, %d) %q after the upgrade, [%d, %d) %q before", s, e, d, startA, endA, dataA)
	}
	if s, e, d := n.session(idB).kept(); s != startB || e != endB || !bytes.Equal(d, dataB) {
		t.Fatalf("session B kept [%d, %d) after the upgrade, [%d, %d) before (bytes equal: %v)", s, e, startB, endB, bytes.Equal(d, dataB))
	}

	// From offset 0: exactly the output so far, then the program's answer.
	cA := n.dial(idA, tokA)
	send(t, cA, "\x02")
	if got := readN(t, cA, len(dataA)); got != string(dataA) {
		t.Fatalf("replay from 0: %q, want %q", got, dataA)
	}
	send(t, cA, "\x00one\n")
	out, code, err := readUntilClose(t, cA)
	if !strings.Contains(out, "got-one") || code != 5 || !errors.As(err, &ce) || ce.Reason != "exit:5" {
		t.Fatalf("after the upgrade: output %q exit %d close %v", out, code, err)
	}

	// From the middle of the wrapped ring: the same cut as before the upgrade.
	cB := n.dial(idB, tokB)
	send(t, cB, "\x02")
	if want := seq[replayB:]; readN(t, cB, len(want)) != want {
		t.Fatalf("replay from offset %d differs", replayB)
	}
	send(t, cB, "\x00\n")
	if _, code, _ := readUntilClose(t, cB); code != 7 {
		t.Fatalf("session B exit %d, want 7", code)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		st := n.m.Stats() // counted at the end, freed just after
		if st.Created == 2 && st.Ended[EndExit] == 2 && st.Live == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats after: %+v, want the 2 sessions counted, ended by their exits", st)
		}
	}
}

// TestHandoverContinuousOutput: a session printing without pause loses no
// byte and repeats none across Freeze, Save and Restore: its numbers run
// on without a gap from the replay into the new manager's live output.
func TestHandoverContinuousOutput(t *testing.T) {
	cfg := Config{KillGrace: time.Second}
	old := newAgentRig(t, cfg, nil)
	id, tok := old.create(map[string]any{"command": "sh", "args": []string{"-c", "i=0; while :; do i=$((i+1)); echo $i; done"}})
	waitOutput(t, old.session(id), 64<<10, "")
	n := upgrade(t, old, cfg, true)
	_, saved, _ := n.session(id).kept()
	c := n.dial(id, tok)
	send(t, c, "\x02")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var pending []byte
	last, seen := -1, int64(0)
	for seen < saved+256<<10 { // well past what the old manager had read
		_, msg, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("read after %d bytes (%d saved): %v", seen, saved, err)
		}
		if msg[0] != opData {
			continue
		}
		seen += int64(len(msg) - 1)
		pending = append(pending, msg[1:]...)
		for {
			i := bytes.Index(pending, []byte("\r\n"))
			if i < 0 {
				break
			}
			v, err := strconv.Atoi(string(pending[:i]))
			if err != nil || (last >= 0 && v != last+1) {
				t.Fatalf("line %q after %d (byte %d of the replay, %d saved): a gap or a repeat", pending[:i], last, seen, saved)
			}
			last, pending = v, pending[i+2:]
		}
	}
	t.Logf("%d bytes in order, %d of them handed over", seen, saved)
}

// TestFreezeThaw: a frozen manager refuses input and new sessions, drops
// its clients with 1012 and loses nothing; after Thaw (a failed exec) it
// runs on as before.
func TestFreezeThaw(t *testing.T) {
	r := newRig(t, Config{})
	id, tok := r.create(map[string]any{"command": "sh", "args": []string{"-c", "echo a; read x; echo got-$x; read y; exit 4"}})
	c1 := r.dial(id, tok)
	send(t, c1, "\x02")
	readN(t, c1, len("a\r\n"))
	r.m.Freeze()
	if _, _, err := readUntilClose(t, c1); websocket.CloseStatus(err) != websocket.StatusServiceRestart {
		t.Fatalf("client of a frozen manager: close %v, want 1012", err)
	}
	resp, err := http.Post(r.srv.URL+"/api/v1/pty", "application/json", strings.NewReader(`{"command":"true","user":"`+strconv.Itoa(os.Getuid())+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("create while frozen: %d, want 503", resp.StatusCode)
	}
	if err := r.m.Save(handover.NewWriter("test")); err != nil {
		t.Fatalf("save of a frozen manager: %v", err)
	}
	r.m.Thaw()
	c2 := r.dial(id, tok)
	send(t, c2, "\x02")
	send(t, c2, "\x00one\n")
	send(t, c2, "\x00\n")
	out, code, _ := readUntilClose(t, c2)
	if !strings.HasPrefix(out, "a\r\n") || !strings.Contains(out, "got-one") || code != 4 {
		t.Fatalf("after Thaw: output %q exit %d", out, code)
	}
}

// mutate rewrites the pty section of an encoded state.
func mutate(t *testing.T, b []byte, f func(*savedState)) []byte {
	t.Helper()
	var st handover.State
	var sec savedState
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(st.Sections[Section], &sec); err != nil {
		t.Fatal(err)
	}
	f(&sec)
	raw, _ := json.Marshal(&sec)
	st.Sections[Section] = raw
	out, _ := json.Marshal(&st)
	return out
}

// TestHandoverDryRunRefuses: the pre-flight (Save without Freeze, Restore
// in dry-run mode) accepts a sound state and refuses each corrupted one,
// and neither changes the old manager or the new one.
func TestHandoverDryRunRefuses(t *testing.T) {
	old := newAgentRig(t, Config{}, nil)
	id, tok := old.create(map[string]any{"command": "cat"})
	old.create(map[string]any{"command": "true"})
	w := handover.NewWriter("test")
	if err := old.m.Save(w); err != nil {
		t.Fatal(err)
	}
	b, _ := w.Encode()
	cases := map[string]func(*savedState){
		"sound":   func(*savedState) {},
		"version": func(st *savedState) { st.Version = 2 },
		"offsets": func(st *savedState) { st.Sessions[0].OutEnd++ },
		"negative": func(st *savedState) {
			st.Sessions[0].OutStart, st.Sessions[0].OutEnd = -1, int64(len(st.Sessions[0].Output))-1
		},
		"size":          func(st *savedState) { st.Sessions[0].Rows = 0 },
		"id":            func(st *savedState) { st.Sessions[0].ID = "../x" },
		"token":         func(st *savedState) { st.Sessions[0].Token = "x" },
		"pid":           func(st *savedState) { st.Sessions[0].Pid = 0 },
		"ref":           func(st *savedState) { r := handover.Ref(99); st.Sessions[0].Master = &r },
		"no master":     func(st *savedState) { st.Sessions[0].Master = nil },
		"twice":         func(st *savedState) { st.Sessions = append(st.Sessions, st.Sessions[0]) },
		"timer":         func(st *savedState) { d := -time.Second; st.Sessions[0].IdleLeft = &d },
		"ended no exit": func(st *savedState) { st.Sessions[0].Ended, st.Sessions[0].Master = true, nil },
	}
	fresh := newAgentRig(t, Config{}, nil)
	for name, f := range cases {
		rd, err := handover.Decode(mutate(t, b, f), true)
		if err != nil {
			t.Fatal(err)
		}
		err = fresh.m.Restore(rd, nil)
		if (err == nil) != (name == "sound") {
			t.Errorf("%s: dry-run Restore = %v", name, err)
		}
		if st := fresh.m.Stats(); st.Live+st.Kept != 0 {
			t.Fatalf("%s: the dry run made sessions: %+v", name, st)
		}
	}
	// The pre-flight's Save changed nothing: the session serves on.
	c := old.dial(id, tok)
	send(t, c, "\x02")
	send(t, c, "\x00ping\n")
	if out := readN(t, c, len("ping\r\nping\r\n")); out != "ping\r\nping\r\n" {
		t.Fatalf("after the pre-flight: %q", out)
	}
}

// TestHandoverTimersAndEnded: the idle timer counts the time before the
// upgrade and still kills the detached session after it; an ended session
// is kept with its exit and output; a leader the new reaper did not adopt
// ends the session with exit -1.
func TestHandoverTimersAndEnded(t *testing.T) {
	const idle = 3 * time.Second
	cfg := Config{IdleTimeout: idle, KillGrace: time.Second}
	old := newAgentRig(t, cfg, nil)
	idIdle, _ := old.create(map[string]any{"command": "sleep", "args": []string{"100"}})
	idEnded, tokEnded := old.create(map[string]any{"command": "sh", "args": []string{"-c", "echo bye; exit 3"}})
	if !waitDone(old.session(idEnded), 20*time.Second) {
		t.Fatal("session did not end")
	}
	time.Sleep(300 * time.Millisecond)
	w := handover.NewWriter("test")
	if err := old.m.Save(w); err != nil {
		t.Fatal(err)
	}
	b, _ := w.Encode()
	rd, _ := handover.Decode(b, true)
	var st savedState
	if _, err := rd.Section(Section, &st); err != nil {
		t.Fatal(err)
	}
	for _, e := range st.Sessions {
		if e.ID == idIdle && (e.IdleLeft == nil || *e.IdleLeft > idle-300*time.Millisecond) {
			t.Fatalf("idle left %v: the time before the upgrade does not count", e.IdleLeft)
		}
		if e.ID == idEnded && (e.ForgetLeft == nil || e.Exit == nil || e.Exit.Code != 3) {
			t.Fatalf("ended session saved as %+v", e)
		}
	}

	n := upgrade(t, old, cfg, true)
	if in := n.session(idEnded).info(); in.IsAlive || in.ExitCode == nil || *in.ExitCode != 3 {
		t.Fatalf("ended session after the upgrade: %+v", in)
	}
	c := n.dial(idEnded, tokEnded)
	send(t, c, "\x02")
	if out, code, _ := readUntilClose(t, c); out != "bye\r\n" || code != 3 {
		t.Fatalf("client of the ended session: %q exit %d", out, code)
	}
	s := n.session(idIdle)
	if !waitDone(s, 30*time.Second) {
		t.Fatal("the restored idle timer never killed the detached session")
	}
	if st := n.m.Stats(); st.Ended[EndIdle] != 1 {
		t.Fatalf("stats %+v: want one idle kill", st)
	}

	// Not adopted: the status is lost, the session ends.
	idLost, _ := n.create(map[string]any{"command": "sleep", "args": []string{"100"}})
	pid := n.session(idLost).pid
	defer func() { _ = unix.Kill(pid, unix.SIGKILL); _, _ = unix.Wait4(pid, nil, 0, nil) }()
	lost := upgrade(t, n, cfg, false)
	ls := lost.session(idLost)
	if !waitDone(ls, 20*time.Second) {
		t.Fatal("a session whose leader was not adopted did not end")
	}
	if in := ls.info(); in.ExitCode == nil || *in.ExitCode != lostExit {
		t.Fatalf("lost leader: %+v, want exit %d", in, lostExit)
	}
}

// TestHandoverLeaksNothing: once the new manager is closed, the fds and
// goroutines of both managers are gone (the old one's end at release, as
// at the exec).
func TestHandoverLeaksNothing(t *testing.T) {
	base := leakcheck.Take(t)
	t.Cleanup(func() { http.DefaultClient.CloseIdleConnections(); base.Check(t) }) // after every rig's
	cfg := Config{KillGrace: time.Second}
	old := newAgentRig(t, cfg, nil)
	id, tok := old.create(map[string]any{"command": "cat"})
	c := old.dial(id, tok)
	send(t, c, "\x02")
	send(t, c, "\x00x\n")
	readN(t, c, len("x\r\nx\r\n"))
	n := upgrade(t, old, cfg, true)
	c.CloseNow()
	c2 := n.dial(id, tok)
	send(t, c2, "\x02")
	send(t, c2, "\x00y\n")
	readN(t, c2, len("x\r\nx\r\ny\r\ny\r\n"))
}
