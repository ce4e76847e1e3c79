package forward

import (
	"context"
	"fmt"
	"net"
	"strconv"

	"github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"
)

// DirectTCPIP serves `ssh -L` and `-D`: a connection from inside the
// sandbox to host:port (RFC 4254 §7.2).
func DirectTCPIP(_ *ssh.Server, _ *gossh.ServerConn, nc gossh.NewChannel, ctx ssh.Context) {
	c := stateOf(ctx)
	if c == nil || !c.enter() {
		_ = nc.Reject(gossh.ConnectionFailed, "connection closing")
		return
	}
	defer c.leave()
	var m struct {
		Host     string
		Port     uint32
		OrigHost string
		OrigPort uint32
	}
	if err := gossh.Unmarshal(nc.ExtraData(), &m); err != nil || m.Port > 65535 {
		_ = nc.Reject(gossh.ConnectionFailed, "bad direct-tcpip request")
		return
	}
	addr := net.JoinHostPort(m.Host, strconv.Itoa(int(m.Port)))
	c.dialAndRelay(ctx, nc, "tcp", addr)
}

// DirectStreamLocal serves `ssh -L local:/remote.sock`: a connection to a
// unix socket inside the sandbox, made as the sandbox user.
func DirectStreamLocal(_ *ssh.Server, _ *gossh.ServerConn, nc gossh.NewChannel, ctx ssh.Context) {
	c := stateOf(ctx)
	if c == nil || !c.enter() {
		_ = nc.Reject(gossh.ConnectionFailed, "connection closing")
		return
	}
	defer c.leave()
	var m struct {
		Path      string
		Reserved0 string
		Reserved1 uint32
	}
	if err := gossh.Unmarshal(nc.ExtraData(), &m); err != nil || m.Path == "" {
		_ = nc.Reject(gossh.ConnectionFailed, "bad direct-streamlocal request")
		return
	}
	conn, err := dialUnixAs(c.user, m.Path)
	if err != nil {
		_ = nc.Reject(gossh.ConnectionFailed, fmt.Sprintf("connect %s: %v", m.Path, err))
		return
	}
	c.acceptAndRelay(nc, conn)
}

// dialAndRelay connects over TCP, which needs no credentials: a user may
// connect anywhere root may.
func (c *sshConn) dialAndRelay(ctx context.Context, nc gossh.NewChannel, network, addr string) {
	d := net.Dialer{Timeout: DialTimeout}
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		_ = nc.Reject(gossh.ConnectionFailed, fmt.Sprintf("connect %s: %v", addr, err))
		return
	}
	c.acceptAndRelay(nc, conn)
}

func (c *sshConn) acceptAndRelay(nc gossh.NewChannel, conn net.Conn) {
	ch, reqs, err := nc.Accept()
	if err != nil {
		conn.Close()
		return
	}
	c.relay(ch, reqs, conn)
}
