package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/coder/websocket"

	"github.com/tensorlake/tl-agent/internal/relay"
)

const (
	// maxTunnelConns bounds the local connections relayed at once; more
	// are closed at accept, with a line on stderr.
	maxTunnelConns = 128
	// tunnelPing is the SDK's keepalive (spec: ping every 15 s).
	tunnelPing = 15 * time.Second
	// maxTunnelMessage bounds one message from the agent.
	maxTunnelMessage = 1 << 20
)

func runTunnel(cfg config, args []string) error {
	fs := newFlags("tunnel", &cfg)
	localPort := fs.Int("local-port", 0, "the local port on 127.0.0.1 (default: the sandbox port)")
	fs.IntVar(localPort, "listen-port", 0, "the same as --local-port (Tensorlake's CLI's name)")
	pos, _, err := parseArgs(fs, args, 0)
	if err != nil {
		return err
	}
	if err := wantArgs("tunnel", pos, 2, 2); err != nil {
		return err
	}
	port, err := strconv.Atoi(pos[1])
	if err != nil || port < 1 || port > 65535 {
		return usageErrorf("port %q: use 1-65535", pos[1])
	}
	if *localPort == 0 {
		*localPort = port
	}
	if *localPort < 1 || *localPort > 65535 {
		return usageErrorf("--local-port %d: use 1-65535", *localPort)
	}
	t, err := cfg.sandbox(pos[0])
	if err != nil {
		return err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(*localPort))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("failed to bind local tunnel listener on %s: %v", addr, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fmt.Fprintf(os.Stderr, "Listening on %s and forwarding to sandbox %s port %d. Press Ctrl-C to stop.\n", ln.Addr(), t.sandbox, port)
	go func() { <-ctx.Done(); ln.Close() }()
	var wg sync.WaitGroup
	slots := make(chan struct{}, maxTunnelConns)
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			time.Sleep(50 * time.Millisecond) // EMFILE and the like: let it pass
			continue
		}
		select {
		case slots <- struct{}{}:
		default:
			fmt.Fprintf(os.Stderr, "Tunnel connection from %s refused: %d connections are open\n", c.RemoteAddr(), maxTunnelConns)
			c.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			if err := tunnelConn(ctx, t, port, c); err != nil {
				fmt.Fprintf(os.Stderr, "Tunnel connection from %s failed: %v\n", c.RemoteAddr(), err)
			}
		}()
	}
	fmt.Fprintf(os.Stderr, "Stopping tunnel listener on %s.\n", ln.Addr())
	wg.Wait()
	return nil
}

// tunnelConn relays one local connection over its own WebSocket, as the
// SDK's createTunnel does.
func tunnelConn(ctx context.Context, t *target, port int, local net.Conn) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { <-ctx.Done(); local.Close() }() // Ctrl-C ends open relays too
	dctx, dcancel := context.WithTimeout(ctx, setupTimeout)
	ws, err := t.dialWS(dctx, "/api/v1/tunnels/tcp?port="+strconv.Itoa(port), nil, "open tunnel")
	dcancel()
	if err != nil {
		local.Close()
		return err
	}
	defer ws.CloseNow()
	ws.SetReadLimit(maxTunnelMessage)
	go func() {
		tick := time.NewTicker(tunnelPing)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				pctx, pcancel := context.WithTimeout(ctx, tunnelPing)
				err := ws.Ping(pctx)
				pcancel()
				if err != nil {
					cancel()
					return
				}
			}
		}
	}()
	relay.Relay(local, websocket.NetConn(ctx, ws, websocket.MessageBinary))
	return nil
}
