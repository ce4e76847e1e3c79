package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/creack/pty"
	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/integration"
	ptypkg "github.com/tensorlake/tl-agent/pty"
	"github.com/tensorlake/tl-agent/supervisor"
)

func init() { register("pty", benchPTY) }

// benchPTY measures PTY sessions through tl-proxy, the uplink and the
// agent against an OpenSSH PTY session on loopback and a bare local PTY
// (the floor): output throughput of `cat` of a large text file, keystroke
// round trips through a raw-mode `cat`, and agent memory per idle session.
func benchPTY(e *Env) []Result {
	size, keys, rounds := int64(64<<20), 1000, 3
	if e.Quick {
		size, keys, rounds = 16<<20, 300, 2
	}
	s := e.System(integration.Options{AgentArgs: []string{"--pty-max-sessions", "1100"}})
	hostFile := textFile(e, size)
	sbxFile := "/tmp/pty-bench.txt"
	if out, err := exec.Command("cp", hostFile, s.SandboxPath(sbxFile)).CombinedOutput(); err != nil {
		e.Fatalf("copy into sandbox: %v %s", err, out)
	}
	ssh := e.OpenSSH()
	catCmd := func(f string) string { return "stty raw -echo; echo READY; read x; cat " + f + "; sleep 0.2" }
	echoCmd := "stty raw -echo; echo READY; exec cat"

	var res []Result
	direct := directTarget(e)
	// The machine is shared: each figure is the best of rounds taken in
	// turns, so a burst of someone else's load does not decide a ratio.
	var ours, oursDirect, sshT, bare float64
	for round := 0; round < rounds; round++ {
		e.Logf("throughput round %d: tl-agent via proxy, pty.Manager in process, OpenSSH, bare PTY", round+1)
		ours = max(ours, oursThroughput(e, proxyTarget(s), catCmd(sbxFile)))
		oursDirect = max(oursDirect, oursThroughput(e, direct, catCmd(hostFile)))
		sshT = max(sshT, sshRun(e, ssh, catCmd(hostFile), func(w io.Writer, r *bufio.Reader) float64 { return throughputOver(e, w, r) }))
		bare = max(bare, bareRun(e, catCmd(hostFile), func(w io.Writer, r *bufio.Reader) float64 { return throughputOver(e, w, r) }))
	}
	res = append(res,
		Result{Name: fmt.Sprintf("cat %d MiB text file", size>>20), Unit: "MB/s", Ours: ours, OpenSSH: sshT, Floor: bare},
		Result{Name: "  the same, pty.Manager without proxy+uplink", Unit: "MB/s", Ours: oursDirect, OpenSSH: sshT, Floor: bare})

	e.Logf("keystrokes")
	oursRTT := oursKeystrokes(e, proxyTarget(s), echoCmd, keys)
	directRTT := oursKeystrokes(e, direct, echoCmd, keys)
	var sshRTT, bareRTT []time.Duration
	e.Logf("keystrokes: OpenSSH")
	sshRun(e, ssh, echoCmd, func(w io.Writer, r *bufio.Reader) float64 { sshRTT = keystrokes(e, w, r, keys); return 0 })
	e.Logf("keystrokes: bare")
	bareRun(e, echoCmd, func(w io.Writer, r *bufio.Reader) float64 { bareRTT = keystrokes(e, w, r, keys); return 0 })
	res = append(res,
		Result{Name: "keystroke round trip p50", Unit: "ms", Ours: Percentile(oursRTT, 50), OpenSSH: Percentile(sshRTT, 50), Floor: Percentile(bareRTT, 50), Lower: true},
		Result{Name: "keystroke round trip p99", Unit: "ms", Ours: Percentile(oursRTT, 99), OpenSSH: Percentile(sshRTT, 99), Floor: Percentile(bareRTT, 99), Lower: true},
		Result{Name: "  p50 without proxy+uplink", Unit: "ms", Ours: Percentile(directRTT, 50), OpenSSH: Percentile(sshRTT, 50), Floor: Percentile(bareRTT, 50), Lower: true},
		Result{Name: "  p99 without proxy+uplink", Unit: "ms", Ours: Percentile(directRTT, 99), OpenSSH: Percentile(sshRTT, 99), Floor: Percentile(bareRTT, 99), Lower: true},
	)
	e.Logf("idle memory")
	return append(res, idleMemory(e, s)...)
}

// textFile writes size bytes of printable lines.
func textFile(e *Env, size int64) string {
	p := e.TempDir() + "/text.txt"
	f, err := os.Create(p)
	if err != nil {
		e.Fatalf("create: %v", err)
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, 1<<20)
	line := []byte("The quick brown fox jumps over the lazy dog; 0123456789 ABCDEFGHIJKLMNOPQRSTUVWXYZ.\n")
	for n := int64(0); n < size; n += int64(len(line)) {
		_, _ = w.Write(line)
	}
	if err := w.Flush(); err != nil {
		e.Fatalf("write: %v", err)
	}
	return p
}

// ptyTarget is where sessions are made: the agent through tl-proxy, or
// the same pty.Manager in this process without proxy and uplink.
type ptyTarget struct {
	base   string // http://host:port
	host   string // Host header ("" for the URL's)
	header http.Header
	user   string // "" for the default (tl-user)
}

func proxyTarget(s *integration.System) ptyTarget {
	return ptyTarget{base: s.BaseURL(), host: s.SandboxID + ".local", header: http.Header{"Authorization": {"Bearer " + s.APIKey}}}
}

// directTarget serves a pty.Manager on loopback in this process: the
// agent's own cost, without tl-proxy and the uplink.
func directTarget(e *Env) ptyTarget {
	reaper := supervisor.NewReaper(zerolog.Nop(), false)
	stop := make(chan struct{})
	go reaper.Run(stop)
	m, err := ptypkg.NewManager(ptypkg.Config{}, zerolog.Nop(), reaper)
	if err != nil {
		e.Fatalf("pty manager: %v", err)
	}
	mux := http.NewServeMux()
	m.Routes(mux)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.Fatalf("listen: %v", err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	e.Cleanup(func() { srv.Close(); m.Close(); close(stop) })
	return ptyTarget{base: "http://" + ln.Addr().String(), header: http.Header{}, user: "root"}
}

// conn attaches a WebSocket client to a new session running command and
// waits for the command's READY line.
func (pt ptyTarget) conn(e *Env, command string) *websocket.Conn {
	body := map[string]any{"command": "sh", "args": []string{"-c", command}}
	if pt.user != "" {
		body["user"] = pt.user
	}
	data, _ := json.Marshal(body)
	req, _ := http.NewRequest("POST", pt.base+"/api/v1/pty", bytes.NewReader(data))
	req.Host = pt.host
	req.Header = pt.header.Clone()
	created := createPTY(e, req)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	h := pt.header.Clone()
	h.Set("X-PTY-Token", created["token"])
	ws := "ws" + strings.TrimPrefix(pt.base, "http")
	c, _, err := websocket.Dial(ctx, ws+"/api/v1/pty/"+created["session_id"]+"/ws", &websocket.DialOptions{Host: pt.host, HTTPHeader: h})
	if err != nil {
		e.Fatalf("dial: %v", err)
	}
	c.SetReadLimit(1 << 20)
	e.Cleanup(func() { c.CloseNow() })
	if err := c.Write(ctx, websocket.MessageBinary, []byte{0x02}); err != nil {
		e.Fatalf("ready: %v", err)
	}
	var seen []byte
	for !strings.Contains(string(seen), "READY") {
		_, msg, err := c.Read(ctx)
		if err != nil {
			e.Fatalf("waiting for READY: %v", err)
		}
		seen = append(seen, msg[1:]...)
	}
	return c
}

// oursThroughput times the output of the cat through proxy and uplink
// until the exit frame.
func oursThroughput(e *Env, pt ptyTarget, command string) float64 {
	c := pt.conn(e, command)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	buf := make([]byte, 64<<10)
	start := time.Now()
	if err := c.Write(ctx, websocket.MessageBinary, []byte("\x00\n")); err != nil {
		e.Fatalf("input: %v", err)
	}
	var total int64
	var end time.Time
	for {
		_, r, err := c.Reader(ctx)
		if err != nil {
			break // closed after the exit frame
		}
		n, _ := io.ReadFull(r, buf[:1])
		if n == 1 && buf[0] == 0x03 {
			break
		}
		m, _ := io.CopyBuffer(io.Discard, r, buf)
		if m > 0 {
			total += m
			end = time.Now()
		}
	}
	return MBps(total, end.Sub(start))
}

// throughputOver sends the newline that starts the cat and times the
// output until the stream pauses at its end (the command sleeps 0.2 s
// after the cat, so the last byte's time is the end).
func throughputOver(e *Env, w io.Writer, r *bufio.Reader) float64 {
	buf := make([]byte, 64<<10)
	start := time.Now()
	if _, err := w.Write([]byte("\n")); err != nil {
		e.Fatalf("input: %v", err)
	}
	var total int64
	var end time.Time
	for {
		n, err := r.Read(buf)
		if n > 0 {
			total += int64(n)
			end = time.Now()
		}
		if err != nil {
			break
		}
	}
	return MBps(total, end.Sub(start))
}

// keystrokes sends one byte at a time to a raw-mode cat and times its echo.
func keystrokes(e *Env, w io.Writer, r *bufio.Reader, n int) []time.Duration {
	ds := make([]time.Duration, 0, n)
	b := []byte{'a'}
	for i := 0; i < n; i++ {
		b[0] = byte('a' + i%26)
		start := time.Now()
		if _, err := w.Write(b); err != nil {
			e.Fatalf("keystroke: %v", err)
		}
		for {
			c, err := r.ReadByte()
			if err != nil {
				e.Fatalf("echo: %v", err)
			}
			if c == b[0] {
				break
			}
		}
		ds = append(ds, time.Since(start))
	}
	return ds
}

func oursKeystrokes(e *Env, pt ptyTarget, command string, n int) []time.Duration {
	c := pt.conn(e, command)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ds := make([]time.Duration, 0, n)
	msg := []byte{0x00, 'a'}
	for i := 0; i < n; i++ {
		msg[1] = byte('a' + i%26)
		start := time.Now()
		if err := c.Write(ctx, websocket.MessageBinary, msg); err != nil {
			e.Fatalf("keystroke: %v", err)
		}
		for echoed := false; !echoed; {
			_, out, err := c.Read(ctx)
			if err != nil {
				e.Fatalf("echo: %v", err)
			}
			echoed = len(out) > 1 && out[0] == 0x00 && strings.IndexByte(string(out[1:]), msg[1]) >= 0
		}
		ds = append(ds, time.Since(start))
	}
	return ds
}

// sshRun runs command in an OpenSSH PTY session (ssh -tt) and hands f the
// session's input and output once the command printed READY.
func sshRun(e *Env, o *integration.OpenSSH, command string, f func(io.Writer, *bufio.Reader) float64) float64 {
	args := append(o.ClientArgs(), "-tt", o.Dest(), command)
	cmd := exec.Command("ssh", args...)
	return runWithReady(e, cmd, nil, f)
}

// bareRun runs command on a local PTY: the floor, no network at all.
func bareRun(e *Env, command string, f func(io.Writer, *bufio.Reader) float64) float64 {
	cmd := exec.Command("sh", "-c", command)
	master, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 24, Cols: 80})
	if err != nil {
		e.Fatalf("bare pty: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	r := bufio.NewReaderSize(master, 64<<10)
	waitReady(e, r)
	v := f(master, r)
	master.Close() // hangs up a cat still running
	<-done
	return v
}

func runWithReady(e *Env, cmd *exec.Cmd, _ any, f func(io.Writer, *bufio.Reader) float64) float64 {
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		e.Fatalf("%s: %v", cmd.Path, err)
	}
	r := bufio.NewReaderSize(stdout, 64<<10)
	waitReady(e, r)
	v := f(stdin, r)
	stdin.Close()
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	return v
}

func waitReady(e *Env, r *bufio.Reader) {
	for {
		line, err := r.ReadString('\n')
		if strings.Contains(line, "READY") {
			return
		}
		if err != nil {
			e.Fatalf("no READY from the command: %v", err)
		}
	}
}

// idleMemory is the agent's resident memory with 0, 100 and 1,000 idle
// sessions (an interactive sh each, no client attached).
func idleMemory(e *Env, s *integration.System) []Result {
	rss := func() float64 {
		time.Sleep(2 * time.Second) // let the agent settle
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.AgentPid()))
		if err != nil {
			e.Fatalf("agent status: %v", err)
		}
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
				return kb
			}
		}
		e.Fatalf("no VmRSS")
		return 0
	}
	create := func(n int) {
		for i := 0; i < n; i++ {
			createPTY(e, s.Request(context.Background(), "POST", "/api/v1/pty", strings.NewReader(`{"command":"sh"}`)))
		}
	}
	base := rss()
	create(100)
	at100 := rss()
	create(900)
	at1000 := rss()
	return []Result{
		{Name: "agent RSS, 0 idle sessions (+2 bench ones)", Unit: "KiB", Ours: base, Lower: true},
		{Name: "agent RSS, 100 idle sessions", Unit: "KiB", Ours: at100, Lower: true},
		{Name: "agent RSS, 1000 idle sessions", Unit: "KiB", Ours: at1000, Lower: true},
		{Name: "agent memory per idle session", Unit: "KiB", Ours: (at1000 - base) / 1000, Lower: true, Note: "target < 64"},
	}
}

// createPTY sends req (a POST /api/v1/pty) and returns the created
// session's answer (session_id, token); anything but 201 ends the run.
func createPTY(e *Env, req *http.Request) map[string]string {
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.Fatalf("create: %v", err)
	}
	var created map[string]string
	_ = json.NewDecoder(resp.Body).Decode(&created)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		e.Fatalf("create: %d %v", resp.StatusCode, created)
	}
	return created
}
