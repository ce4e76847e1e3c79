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

	// The folder and socket are made by the user, in a folder the user
	// may write (/tmp), so they are the user's from the start.
	if c.user == nil {
		return "", errNoUser
	}
	var dir string
	err := c.user.AsUser(func() (err error) {
		dir, err = os.MkdirTemp("", "ssh-")
		return err
	})
	if err != nil {
		return "", fmt.Errorf("agent socket dir: %w", err)
	}
	path := filepath.Join(dir, "agent")
	ln, err := listenUnixAs(c.user, path)
	if err == nil {
		err = c.add("agent:"+path, ln)
	}
	if err != nil {
		if ln != nil {
			ln.Close()
		}
		c.removeAgentDir(dir)
		return "", fmt.Errorf("agent socket: %w", err)
	}
	c.mu.Lock()
	c.agentPath, c.agentDir = path, dir
	c.mu.Unlock()
	c.goServeForward(ln, conn, func(net.Addr) (string, []byte) { return "auth-agent@openssh.com", nil })
	return path, nil
}

// removeAgentDir removes the agent socket's folder as the user: only the
// folder itself (the socket went with its listener), so a folder the user
// filled is left alone rather than walked.
func (c *sshConn) removeAgentDir(dir string) {
	_ = c.user.AsUser(func() error { return os.Remove(dir) })
}
