package forward

import (
	"errors"
	"net"
	"path/filepath"
	"strconv"

	"github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"
)

// tcpipForward serves `ssh -R [addr:]port:...` (RFC 4254 §7.1). Port 0
// asks for any free port, which the reply carries; a privileged port is
// refused, as the sandbox user could not bind it.
func tcpipForward(ctx ssh.Context, _ *ssh.Server, req *gossh.Request) (bool, []byte) {
	c := stateOf(ctx)
	conn, _ := ctx.Value(ssh.ContextKeyConn).(*gossh.ServerConn)
	var m struct {
		Addr string
		Port uint32
	}
	if c == nil || conn == nil || gossh.Unmarshal(req.Payload, &m) != nil || m.Port > 65535 {
		return false, nil
	}
	if err := checkBindPort(m.Port); err != nil {
		c.log.Info().Err(err).Str("addr", m.Addr).Msg("ssh -R refused")
		return false, nil
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(bindHost(m.Addr), strconv.Itoa(int(m.Port))))
	if err != nil {
		c.log.Info().Err(err).Str("addr", m.Addr).Uint32("port", m.Port).Msg("ssh -R refused")
		return false, nil
	}
	port := uint32(ln.Addr().(*net.TCPAddr).Port)
	key := tcpKey(m.Addr, port)
	if err := c.add(key, ln); err != nil {
		ln.Close()
		c.log.Info().Err(err).Msg("ssh -R refused")
		return false, nil
	}
	c.log.Info().Str("listen", ln.Addr().String()).Msg("ssh remote forward")
	c.goServeForward(ln, conn, func(from net.Addr) (string, []byte) {
		oh, op := splitAddr(from)
		return "forwarded-tcpip", gossh.Marshal(&struct {
			Addr     string
			Port     uint32
			OrigHost string
			OrigPort uint32
		}{m.Addr, port, oh, op})
	})
	if m.Port == 0 {
		return true, gossh.Marshal(&struct{ Port uint32 }{port})
	}
	return true, nil
}

func cancelTCPIPForward(ctx ssh.Context, _ *ssh.Server, req *gossh.Request) (bool, []byte) {
	c := stateOf(ctx)
	var m struct {
		Addr string
		Port uint32
	}
	if c == nil || gossh.Unmarshal(req.Payload, &m) != nil {
		return false, nil
	}
	return c.remove(tcpKey(m.Addr, m.Port)), nil
}

func tcpKey(addr string, port uint32) string { return "tcp:" + addr + ":" + strconv.Itoa(int(port)) }

// bindHost maps OpenSSH's bind addresses: "" and "localhost" mean loopback
// (sshd's GatewayPorts=no default), "*" all addresses.
func bindHost(a string) string {
	switch a {
	case "", "localhost":
		return "127.0.0.1"
	case "*":
		return ""
	}
	return a
}

func splitAddr(a net.Addr) (string, uint32) {
	h, p, err := net.SplitHostPort(a.String())
	if err != nil {
		return "", 0
	}
	n, _ := strconv.Atoi(p)
	return h, uint32(n)
}

// streamLocalForward serves `ssh -R /path.sock:...`: a unix socket inside
// the sandbox, made by the sandbox user where that user may make it,
// replacing a stale socket file (sshunix.go).
func streamLocalForward(ctx ssh.Context, _ *ssh.Server, req *gossh.Request) (bool, []byte) {
	c := stateOf(ctx)
	conn, _ := ctx.Value(ssh.ContextKeyConn).(*gossh.ServerConn)
	var m struct{ Path string }
	if c == nil || conn == nil || gossh.Unmarshal(req.Payload, &m) != nil {
		return false, nil
	}
	path := c.socketPath(m.Path)
	ln, err := listenUnixAs(c.user, path)
	if err != nil {
		c.log.Info().Err(err).Str("path", path).Msg("ssh -R socket refused")
		return false, nil
	}
	if err := c.add("unix:"+m.Path, ln); err != nil {
		ln.Close()
		c.log.Info().Err(err).Msg("ssh -R socket refused")
		return false, nil
	}
	c.log.Info().Str("path", path).Msg("ssh remote socket forward")
	c.goServeForward(ln, conn, func(net.Addr) (string, []byte) {
		return "forwarded-streamlocal@openssh.com", gossh.Marshal(&struct {
			Path     string
			Reserved string
		}{m.Path, ""})
	})
	return true, nil
}

func cancelStreamLocalForward(ctx ssh.Context, _ *ssh.Server, req *gossh.Request) (bool, []byte) {
	c := stateOf(ctx)
	var m struct{ Path string }
	if c == nil || gossh.Unmarshal(req.Payload, &m) != nil {
		return false, nil
	}
	return c.remove("unix:" + m.Path), nil
}

// socketPath makes a relative path relative to the user's home.
func (c *sshConn) socketPath(p string) string {
	if filepath.IsAbs(p) || c.user == nil {
		return filepath.Clean(p)
	}
	return filepath.Join(c.user.Home, p)
}

// goServeForward runs serveForward on a tracked goroutine. ln is already
// registered, so if the connection has closed meanwhile ln is closed too.
func (c *sshConn) goServeForward(ln net.Listener, conn *gossh.ServerConn, open func(from net.Addr) (string, []byte)) {
	c.goTrack(func() { c.serveForward(ln, conn, open) })
}

// serveForward accepts on ln and opens a channel back to the client for
// each connection, until ln is closed (cancel or end of connection).
func (c *sshConn) serveForward(ln net.Listener, conn *gossh.ServerConn, open func(from net.Addr) (string, []byte)) {
	for {
		nc, err := ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				c.log.Debug().Err(err).Msg("forward accept")
			}
			return
		}
		ok := c.hold(nc) // until the channel is open, then relay holds it
		if ok {
			ok = c.goTrack(func() {
				defer c.release(nc)
				typ, payload := open(nc.RemoteAddr())
				ch, reqs, err := conn.OpenChannel(typ, payload)
				if err != nil {
					nc.Close()
					return
				}
				c.relay(ch, reqs, nc)
			})
		}
		if !ok {
			nc.Close()
			return
		}
	}
}
