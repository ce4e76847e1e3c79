package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"time"

	"github.com/coder/websocket"

	"github.com/tensorlake/tl-agent/integration"
	"github.com/tensorlake/tl-agent/internal/relay"
)

func init() { register("tunnel", benchTunnel) }

// benchTunnel measures bulk TCP through the WebSocket tunnel
// (GET /api/v1/tunnels/tcp via tl-proxy), against raw loopback and
// OpenSSH's `ssh -L` in the same run. Both tunnels are used the same way:
// the client connects to a local listener (the SDK's createTunnel, or the
// ssh client), which carries the bytes to a target on loopback.
func benchTunnel(e *Env) []Result {
	size := int64(1 << 30)
	if e.Quick {
		size = 256 << 20
	}
	src := targetSource(e, size) // sends size bytes, then closes
	sink := targetSink(e)        // reads to EOF, then answers one byte

	s := e.System(integration.Options{})
	ours := func(target int) int { return wsTunnelListener(e, s, target) }
	o := e.OpenSSH()
	ssh := func(target int) int { return sshForward(e, o, target) }
	raw := func(target int) int { return target }

	var rs []Result
	for _, dir := range []struct {
		name   string
		target int
		run    func(port int) float64
	}{
		{"download", src, func(p int) float64 { return download(e, p, size) }},
		{"upload", sink, func(p int) float64 { return upload(e, p, size) }},
	} {
		floor := dir.run(raw(dir.target))
		theirs := dir.run(ssh(dir.target))
		got := dir.run(ours(dir.target))
		rs = append(rs, Result{Name: "TCP tunnel " + dir.name + ", " + sizeName(size), Unit: "MB/s", Ours: got, OpenSSH: theirs, Floor: floor})
	}
	return rs
}

func sizeName(n int64) string {
	if n >= 1<<30 {
		return fmt.Sprintf("%d GiB", n>>30)
	}
	return fmt.Sprintf("%d MiB", n>>20)
}

// serveLoopback runs handle for each connection on a loopback port.
func serveLoopback(e *Env, handle func(net.Conn)) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.Fatalf("listen: %v", err)
	}
	e.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

func targetSource(e *Env, size int64) int {
	buf := make([]byte, 256<<10)
	return serveLoopback(e, func(c net.Conn) {
		defer c.Close()
		for left := size; left > 0; left -= int64(len(buf)) {
			if _, err := c.Write(buf[:min(left, int64(len(buf)))]); err != nil {
				return
			}
		}
	})
}

func targetSink(e *Env) int {
	return serveLoopback(e, func(c net.Conn) {
		defer c.Close()
		_, _ = io.CopyBuffer(io.Discard, c, make([]byte, 256<<10))
		_, _ = c.Write([]byte{1})
	})
}

func download(e *Env, port int, size int64) float64 {
	c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		e.Fatalf("dial: %v", err)
	}
	defer c.Close()
	start := time.Now()
	n, err := io.CopyBuffer(io.Discard, c, make([]byte, 256<<10))
	if err != nil || n != size {
		e.Fatalf("download through port %d: %d of %d bytes: %v", port, n, size, err)
	}
	return MBps(size, time.Since(start))
}

func upload(e *Env, port int, size int64) float64 {
	c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		e.Fatalf("dial: %v", err)
	}
	defer c.Close()
	buf := make([]byte, 256<<10)
	start := time.Now()
	for left := size; left > 0; left -= int64(len(buf)) {
		if _, err := c.Write(buf[:min(left, int64(len(buf)))]); err != nil {
			e.Fatalf("upload through port %d: %v", port, err)
		}
	}
	_ = c.(*net.TCPConn).CloseWrite()
	ack := make([]byte, 1)
	if _, err := io.ReadFull(c, ack); err != nil {
		e.Fatalf("upload through port %d: no answer: %v", port, err)
	}
	return MBps(size, time.Since(start))
}

// wsTunnelListener is what the SDK's createTunnel does: a local listener
// whose every connection gets its own tunnel WebSocket through the proxy.
func wsTunnelListener(e *Env, s *integration.System, target int) int {
	return serveLoopback(e, func(c net.Conn) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		ws, _, err := s.DialTunnel(ctx, strconv.Itoa(target))
		if err != nil {
			c.Close()
			return
		}
		relay.Relay(c, &clientWS{ws: ws, ctx: ctx, Conn: websocket.NetConn(ctx, ws, websocket.MessageBinary)})
	})
}

// clientWS adds the tunnel's half-close (a zero-length message) to the
// client side's net.Conn.
type clientWS struct {
	net.Conn
	ws  *websocket.Conn
	ctx context.Context
}

func (c *clientWS) CloseWrite() error { return c.ws.Write(c.ctx, websocket.MessageBinary, nil) }

// PrefersBigWrites: one message per relay read, as the agent does.
func (c *clientWS) PrefersBigWrites() bool { return true }

// sshForward starts `ssh -N -L` to OpenSSH for target and returns the
// local port; the ssh client is stopped by pid at cleanup.
func sshForward(e *Env, o *integration.OpenSSH, target int) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.Fatalf("listen: %v", err)
	}
	local := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	args := append(o.ClientArgs(), "-N", "-o", "ExitOnForwardFailure=yes",
		"-L", fmt.Sprintf("127.0.0.1:%d:127.0.0.1:%d", local, target), o.Dest())
	cmd := exec.Command("ssh", args...)
	if err := cmd.Start(); err != nil {
		e.Fatalf("ssh -L: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	e.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", local)); err == nil {
			c.Close()
			return local
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.Fatalf("ssh -L never listened on %d", local)
	return 0
}
