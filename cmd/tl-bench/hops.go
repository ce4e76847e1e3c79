package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/coder/websocket"

	"github.com/tensorlake/tl-agent/integration"
	"github.com/tensorlake/tl-agent/internal/relay"
)

func init() {
	// Re-executed as a relay hop: serve and never return to main.
	if target := os.Getenv(relayEnv); target != "" {
		serveRelay(target)
		os.Exit(0)
	}
	register("hops", benchHops)
}

// relayEnv makes the bench binary a trivial TCP relay process to the
// address it names (see startRelay); with relayBigEnv set too it copies
// in copybuf.Size (256 KiB) steps, the copy buffer of the proxy's
// bulk paths (the files area's floor), instead of copybuf.SmallSize.
const (
	relayEnv    = "TL_BENCH_RELAY_TO"
	relayBigEnv = "TL_BENCH_RELAY_BIG"
)

// benchHops measures a keystroke-sized (1-byte) echo round trip to a
// loopback echo server through our path (client -> tl-proxy -> uplink ->
// agent -> target) beside the architectural floor: the same number of
// process hops, each a plain Go TCP relay (client -> relay A -> relay B ->
// target). Every hop wakes a sleeping thread in another process, which is
// most of the cost on an idle machine; the floor shows how much of our
// figure is that and how much is ours.
func benchHops(e *Env) []Result {
	n := 2000
	if e.Quick {
		n = 1000
	}
	echo := serveLoopback(e, echoConn)
	upgradeEcho := serveLoopback(e, upgradeEchoConn)
	s := e.System(integration.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	chain := startRelay(e, startRelay(e, echo))
	paths := []io.ReadWriter{
		dialTCP(e, echo),
		dialTCP(e, startRelay(e, echo)),
		dialTCP(e, chain),
		portRoute(e, s, upgradeEcho),
		wsTunnel(ctx, e, s, echo),
	}
	// The machine is shared and its load drifts; interleaving short rounds
	// of every path makes the ratios fair even when the absolutes move.
	// TL_BENCH_AB=DIR: the port route of another build (tl-agent and
	// tl-proxy in DIR) in the same interleaved rounds.
	var ab *integration.System
	if dir := os.Getenv("TL_BENCH_AB"); dir != "" {
		ab = e.System(integration.Options{BinDir: dir})
		paths = append(paths, portRoute(e, ab, upgradeEcho))
	}
	got := pingRounds(e, paths, n)
	direct, one, floor, port, ws := got[0], got[1], got[2], got[3], got[4]
	// Under load: the same round trips while another connection through
	// the same processes moves bulk data both ways.
	busyFloor := besideBulk(e, paths[2], func() io.ReadWriteCloser { return dialTCP(e, chain) }, n/2)
	busyPort := besideBulk(e, paths[3], func() io.ReadWriteCloser { return portRoute(e, s, upgradeEcho) }, n/2)
	var abRows []Result
	if ab != nil {
		busyAB := besideBulk(e, paths[5], func() io.ReadWriteCloser { return portRoute(e, ab, upgradeEcho) }, n/2)
		abRows = []Result{
			{Name: "  TL_BENCH_AB build: port route, p50", Unit: "ms", Ours: got[5][0], Floor: floor[0], Lower: true},
			{Name: "  TL_BENCH_AB build: port route, p99", Unit: "ms", Ours: got[5][1], Floor: floor[1], Lower: true},
			{Name: "  TL_BENCH_AB build: port route beside bulk, p50", Unit: "ms", Ours: busyAB[0], Floor: busyFloor[0], Lower: true},
		}
	}
	return append([]Result{
		{Name: "1-byte RTT, direct TCP, p50", Unit: "ms", Ours: direct[0], Lower: true, Note: "(no hop)"},
		{Name: "1-byte RTT, one relay process, p50", Unit: "ms", Ours: one[0], Floor: direct[0], Lower: true},
		{Name: "1-byte RTT, two relay processes, p50", Unit: "ms", Ours: floor[0], Floor: direct[0], Lower: true, Note: "(floor: same number of process hops with plain relays)"},
		{Name: "1-byte RTT, two relay processes, p99", Unit: "ms", Ours: floor[1], Floor: direct[1], Lower: true},
		{Name: "1-byte RTT, port route (HTTP Upgrade), p50", Unit: "ms", Ours: port[0], Floor: floor[0], Lower: true, Note: "(floor: two relay processes)"},
		{Name: "1-byte RTT, port route (HTTP Upgrade), p99", Unit: "ms", Ours: port[1], Floor: floor[1], Lower: true},
		{Name: "1-byte RTT, WebSocket tunnel, p50", Unit: "ms", Ours: ws[0], Floor: floor[0], Lower: true, Note: "(floor: two relay processes)"},
		{Name: "1-byte RTT, WebSocket tunnel, p99", Unit: "ms", Ours: ws[1], Floor: floor[1], Lower: true},
		{Name: "beside bulk: two relay processes, p50", Unit: "ms", Ours: busyFloor[0], Floor: floor[0], Lower: true, Note: "(floor: idle)"},
		{Name: "beside bulk: two relay processes, p99", Unit: "ms", Ours: busyFloor[1], Floor: floor[1], Lower: true},
		{Name: "beside bulk: port route, p50", Unit: "ms", Ours: busyPort[0], Floor: busyFloor[0], Lower: true, Note: "(floor: relays beside bulk)"},
		{Name: "beside bulk: port route, p99", Unit: "ms", Ours: busyPort[1], Floor: busyFloor[1], Lower: true},
	}, abRows...)
}

func echoConn(c net.Conn) {
	defer c.Close()
	c.(*net.TCPConn).SetNoDelay(true)
	_, _ = io.Copy(c, c)
}

// upgradeEchoConn answers one HTTP Upgrade request with 101, then echoes.
func upgradeEchoConn(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	req.Body.Close()
	if _, err := io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"); err != nil {
		return
	}
	buf := make([]byte, 4096)
	for {
		n, err := br.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// serveRelay is the relay process: listen on loopback, print the port,
// relay every connection to target with the agent's own relay.
func serveRelay(target string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	for {
		c, err := ln.Accept()
		if err != nil {
			os.Exit(1)
		}
		go func() {
			t, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				return
			}
			if os.Getenv(relayBigEnv) != "" {
				relay.Relay(bigConn{c.(*net.TCPConn)}, bigConn{t.(*net.TCPConn)})
				return
			}
			relay.Relay(c, t)
		}()
	}
}

// bigConn makes relay.Relay copy toward it in 256 KiB steps.
type bigConn struct{ *net.TCPConn }

func (bigConn) PrefersBigWrites() bool { return true }

// startRelay starts a relay process to 127.0.0.1:target and returns its
// port; the process is killed by pid at cleanup. env is added to the
// relay's environment.
func startRelay(e *Env, target int, env ...string) int {
	self, err := os.Executable()
	if err != nil {
		e.Fatalf("executable: %v", err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(append(os.Environ(), relayEnv+"=127.0.0.1:"+strconv.Itoa(target)), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		e.Fatalf("pipe: %v", err)
	}
	if err := cmd.Start(); err != nil {
		e.Fatalf("relay: %v", err)
	}
	e.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		e.Fatalf("relay port: %v", err)
	}
	port, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		e.Fatalf("relay port %q: %v", line, err)
	}
	return port
}

// pingRounds times n 1-byte round trips over each of paths, in 20
// interleaved rounds, and returns each path's p50 and p99 (ms).
func pingRounds(e *Env, paths []io.ReadWriter, n int) [][2]float64 {
	const rounds = 20
	b := []byte{'x'}
	ds := make([][]time.Duration, len(paths))
	for r := 0; r <= rounds; r++ {
		for i, rw := range paths {
			for j := 0; j < n/rounds; j++ {
				start := time.Now()
				if _, err := rw.Write(b); err != nil {
					e.Fatalf("ping: %v", err)
				}
				if _, err := io.ReadFull(rw, b); err != nil {
					e.Fatalf("pong: %v", err)
				}
				if r > 0 { // round 0 warms up
					ds[i] = append(ds[i], time.Since(start))
				}
			}
		}
	}
	out := make([][2]float64, len(paths))
	for i := range ds {
		out[i] = [2]float64{Percentile(ds[i], 50), Percentile(ds[i], 99)}
	}
	return out
}

// besideBulk times n round trips on rw while a connection from open
// pumps bulk data through the echo target both ways.
func besideBulk(e *Env, rw io.ReadWriter, open func() io.ReadWriteCloser, n int) [2]float64 {
	bulk := open()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.CopyBuffer(io.Discard, bulk, make([]byte, 64<<10))
	}()
	go func() {
		buf := make([]byte, 32<<10)
		for {
			if _, err := bulk.Write(buf); err != nil {
				return
			}
		}
	}()
	time.Sleep(100 * time.Millisecond) // let the bulk flow fill the path
	got := pingRounds(e, []io.ReadWriter{rw}, n)
	bulk.Close()
	<-done
	return got[0]
}

func dialTCP(e *Env, port int) net.Conn {
	c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		e.Fatalf("dial: %v", err)
	}
	e.Cleanup(func() { c.Close() })
	return c
}

// portRoute goes through the proxy's port route: an HTTP Upgrade to
// <port>-<sandbox>.local, then raw bytes both ways.
func portRoute(e *Env, s *integration.System, port int) io.ReadWriteCloser {
	c, err := net.Dial("tcp", s.HTTPAddr)
	if err != nil {
		e.Fatalf("dial proxy: %v", err)
	}
	e.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %d-%s.local\r\nAuthorization: Bearer %s\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n", port, s.SandboxID, s.APIKey)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		e.Fatalf("upgrade through proxy: %v %v", resp, err)
	}
	return struct {
		io.Reader
		io.WriteCloser
	}{br, c}
}

func wsTunnel(ctx context.Context, e *Env, s *integration.System, port int) io.ReadWriter {
	ws, _, err := s.DialTunnel(ctx, strconv.Itoa(port))
	if err != nil {
		e.Fatalf("tunnel: %v", err)
	}
	e.Cleanup(func() { ws.CloseNow() })
	return websocket.NetConn(ctx, ws, websocket.MessageBinary)
}
