package forward

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"
)

// AgentSocket serves `ssh -A`: it makes (once per connection) a socket
// inside the sandbox whose connections become auth-agent@openssh.com
// channels to the client's agent, and returns its path for SSH_AUTH_SOCK.
// The socket lives in a private folder owned by the sandbox user, like
// sshd's /tmp/ssh-XXXX/agent.N, and goes when the connection ends.
func AgentSocket(ctx ssh.Context) (string, error) {
	c := stateOf(ctx)
	conn, _ := ctx.Value(ssh.ContextKeyConn).(*gossh.ServerConn)
	if c == nil || conn == nil {
		return "", errors.New("no connection state")
	}
	c.mu.Lock()
	if c.agentPath != "" {
		defer c.mu.Unlock()
		return c.agentPath, nil
	}
	c.mu.Unlock()

	dir, err := os.MkdirTemp("", "ssh-")
	if err != nil {
		return "", fmt.Errorf("agent socket dir: %w", err)
	}
	path := filepath.Join(dir, "agent")
	ln, err := net.Listen("unix", path)
	if err == nil && c.user != nil && os.Geteuid() == 0 {
		if err = os.Chown(dir, int(c.user.UID), int(c.user.GID)); err == nil {
			err = os.Lchown(path, int(c.user.UID), int(c.user.GID))
		}
	}
	if err == nil {
		err = c.add("agent:"+path, ln)
	}
	if err != nil {
		if ln != nil {
			ln.Close()
		}
		_ = os.RemoveAll(dir)
		return "", fmt.Errorf("agent socket: %w", err)
	}
	c.mu.Lock()
	c.agentPath, c.agentDir = path, dir
	c.mu.Unlock()
	go c.serveForward(ln, conn, func(net.Addr) (string, []byte) { return "auth-agent@openssh.com", nil })
	return path, nil
}
