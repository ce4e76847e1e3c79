package integration

import (
	"fmt"
	"net"
	"sync"
	"testing"
	"time"
)

// TestSSHRelaysEndWithConnection: when an SSH connection ends (the client
// is killed), the agent closes every forward it relayed, even to a target
// that neither speaks nor closes; its fds and goroutines return to the
// baseline. Before, such a relay (half-closed toward the target) waited on
// the target forever: one fd and two goroutines per connection.
func TestSSHRelaysEndWithConnection(t *testing.T) {
	s := startSSH(t, Options{})
	// 127.0.0.2 skips the proxy's stream shortcut: the relay is the agent's.
	silent, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skip("no 127.0.0.2:", err)
	}
	defer silent.Close()
	var mu sync.Mutex
	var held []net.Conn
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	}()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c) // never read, never written, closed at the end
			mu.Unlock()
		}
	}()
	_, _ = s.ssh(t, "", "true") // warm up: first-connection allocations
	time.Sleep(500 * time.Millisecond)
	baseFD, baseG := sshFdCount(t, s.AgentPid()), sshGoroutines(t, s.System)

	const n = 20
	lp := sshFreePort(t)
	cmd, _ := s.background(t, "-N", "-L", fmt.Sprintf("127.0.0.1:%d:%s", lp, silent.Addr()), s.SSHDest())
	var clients []net.Conn
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for deadline := time.Now().Add(15 * time.Second); len(clients) < n; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("ssh -L: %d of %d connections made", len(clients), n)
		}
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", lp))
		if err != nil {
			continue // ssh not listening yet
		}
		_, _ = c.Write([]byte("x"))
		clients = append(clients, c)
	}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		mu.Lock()
		got := len(held)
		mu.Unlock()
		if got >= n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the target got %d of %d relayed connections", got, n)
		}
	}
	_ = cmd.Process.Kill() // the SSH connection ends with its forwards open

	var fd, g int
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		fd, g = sshFdCount(t, s.AgentPid()), sshGoroutines(t, s.System)
		if fd <= baseFD+5 && g <= baseG+10 {
			return
		}
	}
	t.Fatalf("relays outlived their SSH connection: fds %d (baseline %d), goroutines %d (baseline %d) after %d forwards to a silent target",
		fd, baseFD, g, baseG, n)
}
